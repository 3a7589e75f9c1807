//! The embedded Tor client's stand-in in builds without `embedded-tor`:
//! it cannot be made, and says how to get a build that has it.

use crate::{EmbeddedTorConfig, Error, ProgressSink};

/// The embedded Tor client; this build has none ([`crate::COMPILED_IN`] is
/// false), so [`EmbeddedTor::new`] always fails with
/// [`Error::NotCompiledIn`].
#[derive(Debug)]
pub struct EmbeddedTor {
    never: std::convert::Infallible,
}

impl EmbeddedTor {
    /// Always [`Error::NotCompiledIn`] in this build.
    pub fn new(_config: EmbeddedTorConfig, _progress: ProgressSink) -> Result<Self, Error> {
        Err(Error::NotCompiledIn)
    }
}

#[async_trait::async_trait]
impl bento_client::Dialer for EmbeddedTor {
    async fn dial(
        &self,
        _host: &str,
        _port: u16,
    ) -> Result<Box<dyn bento_client::ByteStream>, bento_client::DialError> {
        match self.never {}
    }
}

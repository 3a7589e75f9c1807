//! `bento doctor`: `serve`'s options handed to `bento-doctor`'s checks;
//! the report on stdout, exit 0 when nothing failed (warnings allowed),
//! else 1.

use std::process::ExitCode;

use crate::serve::ServeArgs;

/// `bento doctor`.
pub async fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let setup = bento_doctor::Setup {
        config_file: args.config.clone(),
        policy_file: args.policy.clone(),
        policy: args.policy().map_err(|e| format!("{e:#}")),
        runtime: args.runtime_path(),
        data_dir: args
            .data_dir()
            .map(ToOwned::to_owned)
            .map_err(|e| format!("{e:#}")),
        no_worker_jail: args.no_worker_jail,
        listen: args.listen,
        legacy_listen: args.legacy_listen,
        metrics: args.metrics,
        tor_control: args.tor_control.clone(),
        tor_socks: args.tor_socks,
        onion_port: args.onion_port,
    };
    let whole_config = || args.config().map(drop).map_err(|e| format!("{e:#}"));
    let report = bento_doctor::examine(&setup, whole_config).await;
    #[allow(clippy::print_stdout)]
    {
        print!("{}", report.render());
    }
    Ok(if report.count(bento_doctor::Verdict::Fail) == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

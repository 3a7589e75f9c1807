//! `bento boxes`: its options, the listing of `bento_client::discovery`
//! printed as lines or JSON, and the warning about boxes that prove no TEE.

use std::process::ExitCode;
use std::time::Duration;

use bento_client::discovery::{BoxFilter, Listed, Verdict};
use bento_client::{Requirement, TeeKind};
use bento_policy::Capability;
use clap::Args;
use serde_json::Value;

use crate::exit::EXIT_REQUEST;
use crate::{TargetArgs, terminal, units};

/// Options of `bento boxes`.
#[derive(Debug, Clone, Args)]
pub struct BoxesArgs {
    /// The local tor's ControlPort (cookie authentication), which must
    /// keep relays' server descriptors: torrc `FetchUselessDescriptors 1`.
    #[arg(long, env = "BENTO_TOR_CONTROL", default_value = "127.0.0.1:9051")]
    pub tor_control: String,
    /// Only boxes that offer this capability (connect, http, storage, time,
    /// service, tor_connect, onion_service); repeat for boxes that offer
    /// all of them.
    #[arg(long = "capability", value_name = "NAME", value_parser = parse_capability)]
    pub capabilities: Vec<Capability>,
    /// Only boxes beside relays with the Exit flag.
    #[arg(long)]
    pub exit: bool,
    /// How long each box may take to answer (through Tor), e.g. 30s, 2m.
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    pub timeout: Duration,
    /// Machine-readable output: a JSON array, one object per announcement.
    #[arg(long)]
    pub json: bool,
}

fn parse_capability(name: &str) -> Result<Capability, String> {
    serde_json::from_value(Value::String(name.to_string())).map_err(|_| {
        format!(
            "unknown capability {name:?} (expected connect, http, storage, time, service, \
             tor_connect or onion_service)"
        )
    })
}

/// `bento boxes`.
pub async fn run(args: BoxesArgs, target: &TargetArgs) -> anyhow::Result<ExitCode> {
    let requirement = match target.attest.requirement() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(EXIT_REQUEST));
        }
    };
    let listed = bento_client::discovery::list_boxes(
        &args.tor_control,
        target.socks.as_deref(),
        &requirement,
        args.timeout,
    )
    .await?;
    let filter = BoxFilter {
        exit: args.exit,
        capabilities: args.capabilities,
    };
    let shown: Vec<Listed> = listed.into_iter().filter(|l| filter.shows(l)).collect();
    let unattested_boxes = shown
        .iter()
        .filter(|l| l.verdict == Verdict::Box && l.attestation == Some(TeeKind::None.name()))
        .count();

    if args.json {
        let out: Vec<Value> = shown.iter().map(Listed::to_json).collect();
        terminal::print(&serde_json::to_string_pretty(&out)?);
    } else {
        let boxes = shown.iter().filter(|l| l.verdict == Verdict::Box).count();
        for l in &shown {
            terminal::print(&l.to_line());
        }
        eprintln!(
            "{boxes} box(es) answering of {} announcement(s) shown{}",
            shown.len(),
            if filter.filters() {
                " (filtered: only answering boxes that match)"
            } else {
                ""
            }
        );
    }
    if let Some(warning) = unattested_warning(
        unattested_boxes,
        &requirement,
        target.attest.allow_unattested,
    ) {
        eprintln!("{warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The one-line warning every client command prints about an unattested
/// box, here for the boxes listed that prove no TEE: `None` when there are
/// none, when the user stated a requirement (such boxes are then listed as
/// `attestation_failed`), or with `--allow-unattested`.
fn unattested_warning(
    unattested: usize,
    requirement: &Requirement,
    allow_unattested: bool,
) -> Option<String> {
    if unattested == 0 || allow_unattested || *requirement != Requirement::default() {
        return None;
    }
    Some(format!(
        "warning: {unattested} box(es) answering prove no TEE (attestation none): their operators \
         can read your functions, arguments, input and output (--require-tee to refuse them, \
         --allow-unattested to silence)"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unattested_boxes_are_warned_about_unless_allowed_or_a_tee_is_required() {
        let none = Requirement::default();
        let warning = unattested_warning(2, &none, false).unwrap();
        assert!(warning.starts_with("warning: 2 box(es)"), "{warning}");
        assert!(warning.contains("--allow-unattested"), "{warning}");
        assert_eq!(unattested_warning(2, &none, true), None);
        assert_eq!(unattested_warning(0, &none, false), None);
        let tee = Requirement {
            tee: bento_client::TeeRequirement::AnyTee,
            measurement: None,
            min_snp_tcb: None,
        };
        assert_eq!(unattested_warning(2, &tee, false), None);
    }

    #[test]
    fn capability_names_are_the_policy_names() {
        assert_eq!(parse_capability("http"), Ok(Capability::Http));
        assert_eq!(parse_capability("tor_connect"), Ok(Capability::TorConnect));
        assert!(parse_capability("htp").is_err());
    }
}

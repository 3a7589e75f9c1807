//! `bento serve --config FILE`: every `serve` option as a TOML key.
//!
//! The file is turned back into command-line options and parsed by the
//! same clap definition as the command line, so a key takes exactly the
//! values its flag takes, with the same checks and the same errors, and a
//! new flag is a new key without anything to keep in step. Options given
//! on the command line win over the file; the file wins over defaults.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, FromArgMatches};

use crate::serve::ServeArgs;

/// Keys whose value is a path: a relative path in the file is taken
/// relative to the file's directory (as an operator reading
/// `/etc/bento/box.toml` would expect), not to wherever `bento` started.
const PATH_KEYS: &[&str] = &[
    "data-dir",
    "runtime",
    "policy",
    "legacy-manifest",
    "http-ca-file",
    "tee-collateral",
];

/// The option that names the file itself: not a key inside it.
const CONFIG_FLAG: &str = "config";

/// The `serve` options as clap defines them.
pub(crate) fn serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true))
}

/// `args` with the keys of its `--config` file filled in where the command
/// line (`matches`, the `serve` subcommand's) did not give that option.
pub fn apply(args: ServeArgs, matches: &ArgMatches) -> anyhow::Result<ServeArgs> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--config {}: cannot read it", path.display()))?;
    merge(&path, &text, matches).with_context(|| format!("--config {}", path.display()))
}

/// Parses the options: those from the command line as given, then the
/// file's keys for every option the command line left out.
fn merge(path: &Path, text: &str, matches: &ArgMatches) -> anyhow::Result<ServeArgs> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let command = serve_command();
    let mut argv: Vec<OsString> = Vec::new();
    let mut known = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if long == CONFIG_FLAG || arg.is_hide_set() {
            continue;
        }
        known.push(long);
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            push_from_command_line(&mut argv, arg, matches);
            continue;
        }
        let value = table
            .get(long)
            .or_else(|| table.get(&long.replace('-', "_")));
        if let Some(value) = value {
            push_from_file(&mut argv, arg, long, value, path)?;
        }
    }
    for key in table.keys() {
        if !known.contains(&key.replace('_', "-").as_str()) {
            let hint = if key == CONFIG_FLAG {
                " (a config file cannot name another)".to_owned()
            } else {
                format!(
                    "; the keys are the options of `bento serve`: {}",
                    known.join(", ")
                )
            };
            bail!("unknown key {key:?}{hint}");
        }
    }
    let parsed = command
        .try_get_matches_from(argv)
        .map_err(|e| anyhow::anyhow!("{}", first_line_of(&e)))?;
    let mut args = ServeArgs::from_arg_matches(&parsed).map_err(|e| anyhow::anyhow!("{e}"))?;
    args.config = Some(path.to_owned());
    Ok(args)
}

/// clap's message without its `error: ` prefix and `--help` tip.
fn first_line_of(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// Re-emits an option exactly as the command line gave it.
fn push_from_command_line(argv: &mut Vec<OsString>, arg: &clap::Arg, matches: &ArgMatches) {
    let id = arg.get_id().as_str();
    let flag = format!("--{}", arg.get_long().unwrap_or(id));
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        if matches.get_flag(id) {
            argv.push(flag.into());
        }
        return;
    }
    for raw in matches.get_raw(id).into_iter().flatten() {
        argv.push(flag.clone().into());
        argv.push(raw.to_owned());
    }
}

/// One key of the file as the option it stands for.
fn push_from_file(
    argv: &mut Vec<OsString>,
    arg: &clap::Arg,
    long: &str,
    value: &toml::Value,
    path: &Path,
) -> anyhow::Result<()> {
    let flag = format!("--{long}");
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        match value {
            toml::Value::Boolean(true) => argv.push(flag.into()),
            toml::Value::Boolean(false) => {}
            other => bail!("{long} takes true or false, not {other}"),
        }
        return Ok(());
    }
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => bail!("{long} takes one value (a string or a number), not {other}"),
    };
    let text = if PATH_KEYS.contains(&long) {
        relative_to(path, &text)
    } else {
        text
    };
    argv.push(flag.into());
    argv.push(text.into());
    Ok(())
}

/// `value` as a path relative to the directory holding `config`.
fn relative_to(config: &Path, value: &str) -> String {
    let value_path = Path::new(value);
    if value_path.is_absolute() {
        return value.to_owned();
    }
    let base = config.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    base.join(value_path).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `bento serve ARGS` and applies `config` (written to a file).
    fn serve_with(config: &str, args: &[&str]) -> anyhow::Result<ServeArgs> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("box.toml");
        std::fs::write(&path, config)?;
        let mut argv: Vec<String> = vec!["--config".into(), path.display().to_string()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let matches = serve_command().try_get_matches_from(argv)?;
        let args = ServeArgs::from_arg_matches(&matches)?;
        apply(args, &matches)
    }

    #[test]
    fn every_key_of_the_file_sets_its_option() -> anyhow::Result<()> {
        let args = serve_with(
            "listen = \"127.0.0.1:9999\"\ndata-dir = \"/var/lib/bento\"\nworkers = 3\n\
             no-worker-jail = true\nmemory_mib = 64\nmax-connections = 100\n\
             session-retention-secs = 5\nmetrics = \"127.0.0.1:9100\"\n",
            &[],
        )?;
        assert_eq!(args.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(args.data_dir, Some(PathBuf::from("/var/lib/bento")));
        assert_eq!(args.workers, Some(3));
        assert!(args.no_worker_jail);
        assert_eq!(args.memory_mib, Some(64));
        assert_eq!(args.max_connections, Some(100));
        assert_eq!(args.session_retention_secs, 5);
        assert_eq!(
            args.metrics.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9100")
        );
        Ok(())
    }

    #[test]
    fn the_command_line_wins_over_the_file_and_the_file_over_defaults() -> anyhow::Result<()> {
        let args = serve_with(
            "data-dir = \"/d\"\nworkers = 3\nmax-connections = 100\n",
            &["--workers", "5", "--read-timeout-secs", "7"],
        )?;
        assert_eq!(args.workers, Some(5));
        assert_eq!(args.max_connections, Some(100));
        assert_eq!(args.read_timeout_secs, 7);
        // Neither gave it: the flag's default.
        assert_eq!(args.session_retention_secs, 600);
        Ok(())
    }

    #[test]
    fn a_flag_set_on_the_command_line_stays_set_when_the_file_says_false() -> anyhow::Result<()> {
        let args = serve_with(
            "data-dir = \"/d\"\nno-worker-jail = false\n",
            &["--no-worker-jail"],
        )?;
        assert!(args.no_worker_jail);
        Ok(())
    }

    #[test]
    fn relative_paths_in_the_file_are_relative_to_the_file() -> anyhow::Result<()> {
        let args = serve_with(
            "data-dir = \"state\"\npolicy = \"policy.toml\"\nruntime = \"/abs/r.cwasm\"\n",
            &[],
        )?;
        let config_dir = args
            .config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        assert_eq!(args.data_dir, Some(config_dir.join("state")));
        assert_eq!(args.policy, Some(config_dir.join("policy.toml")));
        assert_eq!(args.runtime, Some(PathBuf::from("/abs/r.cwasm")));
        Ok(())
    }

    #[test]
    fn an_unknown_key_is_refused_and_named() {
        let err = serve_with("data-dir = \"/d\"\nmemroy-mib = 3\n", &[])
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("unknown key \"memroy-mib\""), "{err}");
        assert!(err.contains("memory-mib"), "lists the known keys: {err}");
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_refused_with_the_options_own_check() {
        for (config, expect) in [
            ("data-dir = \"/d\"\nworkers = \"many\"\n", "many"),
            ("data-dir = \"/d\"\nno-worker-jail = 1\n", "true or false"),
            ("data-dir = \"/d\"\nworkers = [1, 2]\n", "one value"),
            ("data-dir = \"/d\"\nmemory-mib = 0\n", "memory-mib"),
            ("data-dir = \"/d\"\nmetrics = \"0.0.0.0:9100\"\n", "oopback"),
            (
                "data-dir = \"/d\"\nconfig = \"other.toml\"\n",
                "cannot name another",
            ),
            ("data-dir = ", "TOML"),
        ] {
            let err = serve_with(config, &[])
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(err.contains(expect), "{config:?}: {err}");
        }
    }

    #[test]
    fn the_example_config_names_every_serve_option() -> anyhow::Result<()> {
        let example = include_str!("../../../packaging/box.toml");
        let keys: Vec<&str> = example
            .lines()
            .filter_map(|line| {
                let line = line.trim_start_matches('#').trim_start();
                let (key, _) = line.split_once(" = ")?;
                (!key.contains(' ')).then_some(key)
            })
            .collect();
        let mut missing = Vec::new();
        let command = serve_command();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long != CONFIG_FLAG && !arg.is_hide_set() && !keys.contains(&long) {
                missing.push(long);
            }
        }
        assert!(missing.is_empty(), "packaging/box.toml lacks {missing:?}");
        // And the example, as shipped, is a valid configuration.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("box.toml");
        std::fs::write(&path, example)?;
        let matches =
            serve_command().try_get_matches_from(["--config", &path.display().to_string()])?;
        apply(ServeArgs::from_arg_matches(&matches)?, &matches)?;
        Ok(())
    }
}

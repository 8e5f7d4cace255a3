//! `host upgrade`: one agent by swap or canary, or every agent of a component in waves.
//! The flags are checked here, before anything reaches the node, so a typo is named with
//! the form it should have had.

use std::path::PathBuf;

use crate::agent::plan::RolloutPlan;
use crate::control::protocol::Request;

/// How one agent is upgraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Pause, hand the state over, serve everything from the new version.
    Swap,
    /// Serve both versions and move conversations to the new one in gated steps.
    Canary,
}

/// The arguments of `host upgrade` as typed.
#[derive(Debug, Clone, clap::Args)]
pub struct UpgradeArgs {
    /// The agent to upgrade, then the new component (.wasm); with --component, only the
    /// new component.
    #[arg(value_name = "AGENT | NEW.wasm")]
    pub first: String,
    /// The new component (.wasm) when an agent is named first.
    #[arg(value_name = "NEW.wasm")]
    pub second: Option<PathBuf>,
    /// swap (default) or canary.
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Canary steps: rising percentages of conversations ending at 100 [default: 10,25,50,100]
    #[arg(long, value_name = "PERCENTS")]
    pub steps: Option<String>,
    /// How long each step (or wave) is watched before the gates are checked [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// A health gate green must stay under, e.g. error_rate<5%, p95<2x, traps<1,
    /// memory<90%, llm_failures<10% (repeatable) [default: error_rate<5%, traps<3,
    /// memory<90%, llm_failures<10%]
    #[arg(long = "gate", value_name = "GATE")]
    pub gates: Vec<String>,
    /// Upgrade every agent running this component (a digest prefix of 6+ hex digits or the
    /// component's file name without .wasm), in waves.
    #[arg(long = "component", value_name = "DIGEST_OR_NAME")]
    pub of_component: Option<String>,
    /// Waves for --component: rising percentages of the agents ending at 100
    /// [default: 10,25,50,100]
    #[arg(long, value_name = "PERCENTS")]
    pub waves: Option<String>,
}

/// The control request these arguments ask for, or what is wrong with them.
pub fn request(args: &UpgradeArgs) -> Result<Request, String> {
    let absolute = |p: &std::path::Path| {
        super::verbs::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let file = |p: PathBuf| -> Result<PathBuf, String> {
        if !p.is_file() {
            return Err(format!(
                "{} is not a file; expected the new component (.wasm)",
                p.display()
            ));
        }
        absolute(&p)
    };
    if let Some(selector) = &args.of_component {
        if let Some(second) = &args.second {
            return Err(format!(
                "--component {selector} upgrades every agent running it: give only the new component, not an agent name too (got '{}' and '{}')",
                args.first,
                second.display()
            ));
        }
        if args.strategy.is_some() || args.steps.is_some() {
            return Err("--strategy and --steps apply to one agent; --component upgrades agents in --waves (e.g. --waves 10,25,50,100)".into());
        }
        let plan = RolloutPlan::from_args(
            "--waves",
            args.waves.as_deref(),
            args.interval.as_deref(),
            &args.gates,
        )?;
        return Ok(Request::UpgradeComponent {
            selector: selector.clone(),
            component: file(PathBuf::from(&args.first))?,
            plan,
        });
    }
    if args.waves.is_some() {
        return Err("--waves applies with --component DIGEST_OR_NAME (every agent running a component); for one agent use --strategy canary --steps".into());
    }
    let Some(component) = args.second.clone() else {
        return Err(format!(
            "give the agent and the new component: host upgrade {} NEW.wasm (or --component DIGEST_OR_NAME NEW.wasm for every agent running a component)",
            args.first
        ));
    };
    let canary = match args.strategy.unwrap_or(Strategy::Swap) {
        Strategy::Swap => {
            if args.steps.is_some() || args.interval.is_some() || !args.gates.is_empty() {
                return Err("--steps, --interval and --gate apply to --strategy canary (a swap has no steps)".into());
            }
            None
        }
        Strategy::Canary => Some(RolloutPlan::from_args(
            "--steps",
            args.steps.as_deref(),
            args.interval.as_deref(),
            &args.gates,
        )?),
    };
    Ok(Request::Upgrade {
        name: args.first.clone(),
        component: file(component)?,
        canary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: UpgradeArgs,
    }

    fn parse(line: &[&str]) -> Result<Request, String> {
        let cmd = Cmd::try_parse_from(std::iter::once("upgrade").chain(line.iter().copied()))
            .map_err(|e| e.to_string())?;
        request(&cmd.args)
    }

    fn wasm() -> tempfile::NamedTempFile {
        tempfile::Builder::new().suffix(".wasm").tempfile().unwrap()
    }

    #[test]
    fn a_canary_takes_steps_interval_and_gates() {
        let f = wasm();
        let path = f.path().to_str().unwrap();
        let req = parse(&[
            "counter",
            path,
            "--strategy",
            "canary",
            "--steps",
            "20,100",
            "--interval",
            "5s",
            "--gate",
            "p95<2x",
            "--gate",
            "traps<1",
        ])
        .unwrap();
        let Request::Upgrade {
            name,
            canary: Some(plan),
            ..
        } = req
        else {
            panic!("{req:?}")
        };
        assert_eq!(name, "counter");
        assert_eq!(plan.steps, vec![20, 100]);
        assert_eq!(plan.interval.as_secs(), 5);
        assert_eq!(plan.gates.len(), 2);
    }

    #[test]
    fn waves_upgrade_a_component() {
        let f = wasm();
        let req = parse(&[
            "--component",
            "counter",
            f.path().to_str().unwrap(),
            "--waves",
            "50,100",
        ])
        .unwrap();
        assert!(
            matches!(&req, Request::UpgradeComponent { selector, plan, .. } if selector == "counter" && plan.steps == [50, 100]),
            "{req:?}"
        );
    }

    #[test]
    fn bad_flags_say_which_and_the_expected_form() {
        let f = wasm();
        let p = f.path().to_str().unwrap();
        for (line, says) in [
            (
                vec!["a", p, "--strategy", "canary", "--steps", "10,50"],
                "--steps 10,50: the last step must be 100",
            ),
            (
                vec!["a", p, "--strategy", "canary", "--interval", "30"],
                "--interval \"30\": no unit",
            ),
            (
                vec!["a", p, "--strategy", "canary", "--gate", "errors<5%"],
                "unknown measure 'errors'",
            ),
            (
                vec!["a", p, "--steps", "10,100"],
                "apply to --strategy canary",
            ),
            (
                vec!["a", p, "--waves", "10,100"],
                "--waves applies with --component",
            ),
            (
                vec!["--component", "counter", p, "--waves", "50"],
                "--waves 50: the last step must be 100",
            ),
            (
                vec!["--component", "counter", "a", p],
                "give only the new component",
            ),
            (
                vec!["--component", "counter", p, "--strategy", "canary"],
                "apply to one agent",
            ),
            (vec!["a"], "give the agent and the new component"),
            (vec!["a", "/nonexistent.wasm"], "is not a file"),
            (
                vec!["a", p, "--strategy", "blue"],
                "invalid value 'blue' for '--strategy",
            ),
        ] {
            let err = parse(&line).unwrap_err();
            assert!(err.contains(says), "{line:?}: {err}");
        }
    }
}

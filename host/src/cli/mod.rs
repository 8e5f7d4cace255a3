//! The `host` command line: `run` starts a node; the other verbs are clients of a running
//! node's control API, except `check`, which needs no node.

mod check;
mod output;
mod run;
mod upgrade;
mod verbs;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Runs AI agents as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "host", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the control socket of the node is (every verb that talks to a node takes it).
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArg {
    /// Control socket of the node [default: ./data/host.sock, the node's default]
    #[arg(long, env = "HOST_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,
}

impl ControlArg {
    pub fn path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| PathBuf::from("data").join("host.sock"))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node in the foreground (Ctrl-C stops it, saving every agent's state).
    Run {
        /// Node config (TOML); without one, embedded defaults and no agents.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Folder for the KV store, snapshots and the control socket [default: ./data]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Control socket path [default: DATA_DIR/host.sock]
        #[arg(long, env = "HOST_CONTROL", value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Load an agent into the running node.
    Load {
        /// The component (.wasm); defaults to the manifest's [agent] component.
        component: Option<PathBuf>,
        /// Capability manifest (TOML); without one the agent may do nothing but receive
        /// messages on its own subjects and use its own KV namespace.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// Agent name (overrides the manifest's; default: the file name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        control: ControlArg,
    },
    /// List the agents of the running node.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArg,
    },
    /// The node's health: agents not running, and where the bus stands (NATS: connected to
    /// which server). Exits non-zero when the node is degraded.
    Health {
        /// Print JSON (the same as GET /health).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Show one agent: identity, version, state, counters, subscriptions and grants.
    Status {
        agent: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Stop an agent (after its in-flight message; its state is saved) and remove it.
    Unload {
        agent: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Upgrade a running agent to a new component, carrying its state across: `host
    /// upgrade AGENT NEW.wasm` swaps (blue-green), `--strategy canary` moves conversations
    /// over in gated steps, `--component OLD NEW.wasm --waves ...` upgrades every agent
    /// running a component. The old version stays warm for `host rollback` until promoted
    /// or the window closes.
    Upgrade {
        #[command(flatten)]
        args: upgrade::UpgradeArgs,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Go back to the version the last upgrade replaced, handing it the current state.
    Rollback {
        agent: String,
        /// If the old version cannot read the new state, restore its state from the swap
        /// instead (the effects of messages handled since are lost; the count is shown).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Keep the upgraded version and retire the one kept warm for rollback.
    Promote {
        agent: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Publish a message; with --wait, print the reply's payload.
    Send {
        subject: String,
        payload: String,
        /// A header, as KEY=VALUE (repeatable).
        #[arg(long = "header", value_name = "KEY=VALUE")]
        headers: Vec<String>,
        /// Wait up to SECS for a reply and print its payload; exit 1 if none comes.
        #[arg(long, value_name = "SECS")]
        wait: Option<f64>,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Validate a manifest (and a component against the WIT world) without a node, and
    /// print everything that agent will be allowed to do.
    Check {
        manifest: PathBuf,
        component: Option<PathBuf>,
    },
}

/// Runs the command; the error is printed by `main` and turns into exit code 1.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run {
                config,
                data_dir,
                control,
            } => run::run(config, data_dir, control).await,
            Command::Check {
                manifest,
                component,
            } => check::check(&manifest, component.as_deref()),
            other => verbs::client_verb(other).await,
        }
    })
}

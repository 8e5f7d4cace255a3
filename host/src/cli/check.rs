//! `host check`: validate a manifest (and optionally a component) without a node.

use std::path::Path;

use crate::config::EngineSection;
use crate::engine::Engine;
use crate::manifest::Manifest;

pub fn check(manifest_path: &Path, component: Option<&Path>) -> anyhow::Result<()> {
    let manifest = Manifest::from_file(manifest_path)?;
    let component = component
        .map(Path::to_path_buf)
        .or_else(|| manifest.agent.component.clone());
    println!("{}: valid manifest", manifest_path.display());
    if let Some(path) = component {
        let engine = Engine::new(&EngineSection {
            max_agents: 1,
            ..EngineSection::default()
        })?;
        let compiled = engine.compile_file(&path, manifest.agent.sha256.as_deref())?;
        println!(
            "{}: a component of the agent:host/agent world ({} bytes, sha256 {})",
            path.display(),
            compiled.size_bytes,
            compiled.digest
        );
    }
    println!();
    println!("{}", manifest.describe());
    Ok(())
}

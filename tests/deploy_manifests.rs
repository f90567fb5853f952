//! Issue 11: the Kubernetes manifests under `deploy/` are valid for the
//! Kubernetes API (`kubernetes-validate --strict`, installed by `.ci/run`),
//! and the kustomization lists every one of them.

use std::path::Path;
use std::process::Command;

fn deploy() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"))
}

/// The resource files `kustomization.yaml` lists.
fn resources() -> Vec<String> {
    let text = std::fs::read_to_string(deploy().join("kustomization.yaml")).expect("kustomization");
    let mut resources = Vec::new();
    let mut in_list = false;
    for line in text.lines() {
        if line.starts_with("resources:") {
            in_list = true;
        } else if in_list {
            match line.trim_start().strip_prefix("- ") {
                Some(file) if line.starts_with("  ") => resources.push(file.trim().to_owned()),
                _ => in_list = false,
            }
        }
    }
    resources
}

#[test]
fn the_manifests_pass_strict_validation() {
    let files = resources();
    assert!(
        files.len() >= 3,
        "kustomization lists the StatefulSet, Services and PDB: {files:?}"
    );
    let mut yaml: Vec<String> = std::fs::read_dir(deploy())
        .expect("deploy/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    yaml.sort();
    let mut listed = files.clone();
    listed.sort();
    assert_eq!(listed, yaml, "every manifest is in the kustomization");
    let output = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(files.iter().map(|f| deploy().join(f)))
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate not runnable ({e}); .ci/run installs it (pip install kubernetes-validate)")
        });
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}");
    for file in &files {
        assert!(
            report.contains(&format!("{file} passed")),
            "{file} not checked:\n{report}"
        );
    }
    for kind in [
        "statefulset/baton",
        "service/baton-peers",
        "service/baton",
        "poddisruptionbudget/baton",
    ] {
        assert!(report.contains(kind), "{kind} missing:\n{report}");
    }
}

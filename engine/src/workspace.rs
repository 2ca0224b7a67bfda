//! The workspace root, found by one rule for every command.
//!
//! Starting from a folder (a manifest's folder, or the current directory for
//! commands without a manifest), the root is the nearest ancestor, the folder
//! itself included, that holds a `.pipe` directory or a `.git` entry (a
//! directory, or the file of a git worktree or submodule). When there is none,
//! the folder itself is the root. `.pipe/` (the store, logs, endpoints) lives
//! in the root, and workspace input paths are relative to it.

use std::path::{Path, PathBuf};

/// The workspace root for `start` (see the module docs for the rule).
pub fn find_root(start: &Path) -> PathBuf {
    let start = std::path::absolute(start).unwrap_or_else(|_| start.to_path_buf());
    start
        .ancestors()
        .find(|d| d.join(".pipe").is_dir() || d.join(".git").exists())
        .map(Path::to_path_buf)
        .unwrap_or(start)
}

/// The workspace root for a manifest: [`find_root`] of its folder.
pub fn root_of_manifest(manifest: &Path) -> PathBuf {
    let abs = std::path::absolute(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    find_root(abs.parent().unwrap_or(Path::new("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_marker_wins_else_the_folder_itself() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(find_root(&sub), sub);
        std::fs::write(dir.path().join(".git"), "gitdir: elsewhere\n").unwrap();
        assert_eq!(find_root(&sub), dir.path());
        std::fs::create_dir(dir.path().join("a/.pipe")).unwrap();
        assert_eq!(find_root(&sub), dir.path().join("a"));
        assert_eq!(
            root_of_manifest(&sub.join("pipe.yaml")),
            dir.path().join("a")
        );
    }
}

//! `pipe validate [MANIFEST...]`: check manifests without running anything;
//! every manifest is checked and every error printed.

use std::path::PathBuf;

use pipe_engine::Registry;

use super::check_default;
use crate::exit::{self, Failure};
use crate::reporter;

pub fn validate(
    manifests: &[PathBuf],
    sets: &[(String, String)],
    quiet: bool,
    registry: &Registry,
) -> Result<i32, Failure> {
    let mut code = exit::OK;
    for m in manifests {
        check_default(m)?;
        match pipe_engine::load(m, sets, registry) {
            Ok(p) if !quiet => {
                reporter::note(&format!("{}: ok ({} stages)", m.display(), p.stages.len()))
            }
            Ok(_) => {}
            Err(e) => {
                reporter::error(&e.to_string());
                code = exit::BAD_INPUT;
            }
        }
    }
    Ok(code)
}

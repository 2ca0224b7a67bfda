//! The engine: from a manifest to executed, cached stages.
//!
//! ```text
//! manifest::load ──▶ Pipeline { stages, Dag } ──▶ plan (keys, reasons) ──▶ scheduler ──▶ StageKind::run
//!                                                      │                        │
//!                                                      └──── pipe_cache::Store ◀┘ (commit, materialise)
//! ```
//!
//! Start reading at [`manifest`], then [`scheduler::run`], then
//! [`executor`] (which decides a stage's [`executor::Freshness`], then runs it
//! to an [`executor::Outcome`]); [`gc`] collects the store. The engine knows
//! stage kinds only through [`stage::StageKind`]; it never prints, it emits
//! [`event::Event`]s for a reporter. Stages start child processes through
//! [`interrupt::Interrupt`], which stops them on Ctrl-C and after a crash.

pub mod cluster;
pub mod dag;
pub mod manifest;
pub mod pipeline;
pub mod stage;
pub mod workspace;

pub use pipe_cache as cache;
pub mod event;
pub mod executor;
pub mod gc;
pub mod interrupt;
pub mod lockfile;
pub mod remote;
pub mod scheduler;

pub use event::{CacheSource, Event, Reporter, StageResult, Status};
pub use interrupt::Interrupt;
pub use manifest::{load, load_with, ManifestError, WorkspacePaths};
pub use pipeline::{Input, InputRef, Pipeline, Stage};
pub use remote::RemoteCache;
pub use scheduler::{run, run_with_remote, EngineError, Force, RunOptions, RunSummary};
pub use stage::{Kind, PreparedStage, Registry, StageContext, StageError, StageKind, WithError};

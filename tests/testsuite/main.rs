//! The integration tests, one binary with a module per topic (as cargo's own testsuite):
//! one link step instead of one per file. Kept apart, as their own test binaries, are the tests
//! that change process-wide state (the working directory, the umask), watch the whole file
//! system (fanotify), or make fixtures: `tests/stacker_cwd.rs`, `tests/reliability_files.rs`,
//! `tests/reliability_races.rs`, `tests/make_v1_fixture.rs`.

// Helpers shared by several topics (each compiled once).
#[allow(dead_code, unused_imports)]
#[path = "../../examples/builder.rs"]
mod builder_example;
#[allow(dead_code)]
#[path = "../../benches/chain/shell.rs"]
mod chain_shell;
#[allow(unused_imports)]
#[path = "../common/mod.rs"]
mod common;
#[allow(dead_code)]
mod common_machine;
#[allow(dead_code, unused_imports)]
#[path = "../../examples/demo.rs"]
mod demo_example;
#[allow(dead_code, unused_imports)]
#[path = "../support/inotify.rs"]
mod inotify;
#[allow(dead_code, unused_imports)]
#[path = "../../examples/common/layer.rs"]
mod layer;
#[allow(dead_code, unused_imports)]
#[path = "../support/mapping.rs"]
mod mapping;
#[allow(unused_imports)]
#[path = "../support_registry/mod.rs"]
mod registry;
#[allow(unused_imports)]
#[path = "../support_builder/mod.rs"]
mod support_builder;
#[allow(unused_imports)]
#[path = "../../benches/treegen/mod.rs"]
mod treegen;
#[allow(unused_imports)]
#[path = "../fixture_inputs/v1_oldest.rs"]
mod v1_oldest;

// The topics.
mod builder;
mod cache;
mod cli_build;
mod cli_chain;
mod cli_debug;
mod cli_false_hits;
mod cli_progress;
mod cli_surface;
mod demo;
mod dir_proof;
mod false_hits;
mod hashing;
mod input_files;
mod last_use_cost;
mod lookup_pipeline;
mod migrate;
mod migrate_v3;
mod oci_bases;
mod outputs_rule;
mod plan;
mod put_reuse;
mod put_rows;
mod record_codec;
mod reliability_concurrency;
mod reliability_crash;
mod reliability_crash_points;
mod reliability_damage;
mod reliability_fuzz;
mod reliability_hostile;
mod remote;
mod remote_cache;
mod remote_trust;
mod report;
mod stacker;
mod stacker_import;
mod stat_fast_path;
mod store_boundary;
mod store_open;
mod tree_diff;
mod versions;
mod walkers;

//! The plan file: a JSON description of a build's layers for the `layercache` binary.

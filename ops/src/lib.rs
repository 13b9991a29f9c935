//! nextflow-ops

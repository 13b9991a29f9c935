//! nextflow-model

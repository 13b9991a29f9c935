//! nextflow-compiler

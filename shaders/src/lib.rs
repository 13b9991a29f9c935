//! nextflow-shaders

//! `nextflow inspect`: what a model is, without loading its weights.

use super::*;

/// Plain words for the config's switches (`inspect`).
fn rope_axes_words(a: nextflow_model::config::RopeAxes) -> &'static str {
    match a {
        nextflow_model::config::RopeAxes::Srw => "scale, row, column",
        nextflow_model::config::RopeAxes::Rws => "row, column, scale",
    }
}

fn input_words(m: nextflow_model::config::InputMode) -> &'static str {
    match m {
        nextflow_model::config::InputMode::Residual => "residual (each scale's codes alone)",
        nextflow_model::config::InputMode::Accumulated => "accumulated (the sum of all scales so far)",
    }
}

fn level_words(l: nextflow_model::config::LevelEmbedding) -> &'static str {
    match l {
        nextflow_model::config::LevelEmbedding::SourceScale => "by the scale an input map comes from",
        nextflow_model::config::LevelEmbedding::TargetScale => "by the scale an input map predicts",
    }
}

pub fn inspect(args: &InspectArgs) -> Result<()> {
    let margs = &args.model;
    if let Some(f) = var::files(margs)? {
        return var::inspect(&f, args.json);
    }
    let config = config_of(margs)?;
    let b = &config.backbone;
    let weights = if margs.random_weights { None } else { open_weights(margs)?.map(|(w, _)| w) };
    let mut params = config.transformer_parameters() as u64;
    let parts = config.nextflow.as_ref().map(|p| {
        let t = &p.tokenizer;
        let v = &p.visual;
        params += (b.hidden_size * (t.code_dim() + 1) + b.hidden_size * (b.hidden_size + 1) + (t.scales.len() + 1) * b.hidden_size) as u64;
        report::Parts {
            text_ids: p.vocabulary.code_start(),
            visual_codes: p.vocabulary.codebook_size,
            canvases: t
                .canvases()
                .iter()
                .map(|((h, w), scales)| report::Canvas { width: *w, height: *h, patch_size: t.patch_size, scales: scales.clone(), tokens: scales.iter().map(|[a, b]| a * b).sum() })
                .collect(),
            visual_input: input_words(v.input_mode).into(),
            rope_sections: v.mrope_section.clone(),
            rope_axes: rope_axes_words(v.rope_axes).into(),
            rope_scale_c: v.rope_scale_c,
            level_embedding: level_words(v.level_embedding).into(),
            scale_count_embedding: v.scale_length_embedding,
            codebook: "dual, L2-normalized halves (TokenFlow)".into(),
            codebook_size: t.codebook_size,
            semantic_dim: t.semantic_dim,
            pixel_dim: t.pixel_dim,
            sampler: report::Sampler { cfg: p.sampler.cfg_scale, top_k: p.sampler.top_k, top_p: p.sampler.top_p, temperature: p.sampler.temperature },
            cfg_schedule: format!("{:?}", p.sampler.cfg_schedule).to_lowercase(),
        }
    });
    let checkpoint = weights.as_ref().map(|w| {
        params = w.names().filter_map(|n| w.info(n)).map(|i| i.shape.iter().product::<usize>() as u64).sum();
        report::Checkpoint { tensors: w.names().count(), bytes_by_dtype: w.disk_dtypes().iter().map(|(d, n)| (d.to_string(), *n as u64)).collect() }
    });
    let context = b.max_position_embeddings;
    let kv_per_token = (2 * b.num_hidden_layers * b.num_key_value_heads * b.head_dim()) as u64;
    let kv_positions = config.nextflow.as_ref().map_or(4096, |p| 2 * (p.tokenizer.tokens() + 64)).min(context);
    let memory = report::Memory {
        kv_positions,
        by_dtype: [("f32", 4u64), ("f16", 2), ("bf16", 2)]
            .iter()
            .map(|(n, size)| (n.to_string(), report::MemoryEntry { weights: params * size, kv_cache: kv_per_token * kv_positions as u64 * size }))
            .collect(),
    };
    let r = report::InspectReport {
        nextflow: env!("CARGO_PKG_VERSION"),
        model: describe(margs),
        model_type: format!("{:?}", config.model_type).to_lowercase(),
        backbone: report::Backbone {
            layers: b.num_hidden_layers,
            hidden_size: b.hidden_size,
            attention_heads: b.num_attention_heads,
            kv_heads: b.num_key_value_heads,
            head_dim: b.head_dim(),
            intermediate_size: b.intermediate_size,
            vocab_size: config.vocab_size,
            rope_theta: b.rope_theta,
            tied_embeddings: b.tie_word_embeddings,
            context,
        },
        nextflow_parts: parts,
        parameters: params,
        checkpoint,
        memory,
    };
    if args.json {
        return print_json(&r);
    }
    let bb = &r.backbone;
    println!("model        {}", r.model);
    println!("type         {}", if config.model_type == ModelType::NextFlow { "NextFlow (text and images)" } else { "Qwen2 (text)" });
    println!(
        "backbone     Qwen2: {} layers, hidden {}, {} heads / {} kv heads (head_dim {}), SwiGLU {}, vocab {}, rope_theta {}, {} output head, context {} positions",
        bb.layers, bb.hidden_size, bb.attention_heads, bb.kv_heads, bb.head_dim, bb.intermediate_size, bb.vocab_size, bb.rope_theta,
        if bb.tied_embeddings { "tied" } else { "separate" }, bb.context
    );
    if let Some(p) = &r.nextflow_parts {
        println!("vocabulary   {} text ids (specials + words), {} visual codes from id {}", p.text_ids, p.visual_codes, p.text_ids);
        for (i, c) in p.canvases.iter().enumerate() {
            let label = if i == 0 { "image       " } else { "            " };
            let listed: Vec<String> = c.scales.iter().map(|[a, b]| if a == b { format!("{a}") } else { format!("{a}x{b}") }).collect();
            let flags = format!("--size {} --aspect {}", c.height.min(c.width), aspect_of(c.width, c.height));
            println!("{label} {}x{} px ({flags}), {} px/token, {} scales [{}] ({} tokens)", c.width, c.height, c.patch_size, c.scales.len(), listed.join(", "), c.tokens);
        }
        println!(
            "visual rows  input maps {}; 3D RoPE over ({}) with {:?} frequency pairs, C = {}; level embedding {}; scale-count embedding {}",
            p.visual_input, p.rope_axes, p.rope_sections, p.rope_scale_c, p.level_embedding, if p.scale_count_embedding { "on" } else { "off" }
        );
        if let Some(t) = config.nextflow.as_ref().map(|p| &p.tokenizer) {
            println!("tokenizer    {} codebook, {} codes x ({} semantic + {} pixel dims), decoder {} channels x {:?}, {} res blocks per level", p.codebook, p.codebook_size, p.semantic_dim, p.pixel_dim, t.ch, t.ch_mult, t.decoder_res_blocks);
        }
        println!("sampler      cfg {} ({}), top-k {}, top-p {}, temperature {}", p.sampler.cfg, p.cfg_schedule, p.sampler.top_k, p.sampler.top_p, p.sampler.temperature);
    }
    match &r.checkpoint {
        Some(c) => {
            let dtypes: Vec<String> = c.bytes_by_dtype.iter().map(|(d, n)| format!("{d} {}", ui::bytes(*n))).collect();
            println!("checkpoint   {} tensors, {:.2} M parameters, on disk: {}", c.tensors, r.parameters as f64 / 1e6, dtypes.join(", "));
        }
        None => println!("parameters   {:.3} B (computed from the shapes)", r.parameters as f64 / 1e9),
    }
    let what = if config.nextflow.is_some() { "one image with CFG (2 rows)" } else { "4096 text positions" };
    println!("memory       weights + KV cache for {} positions ({what}, at most the context):", r.memory.kv_positions);
    for (name, m) in &r.memory.by_dtype {
        println!("  {name:5} {} + {}", ui::bytes(m.weights), ui::bytes(m.kv_cache));
    }
    Ok(())
}

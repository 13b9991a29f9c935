//! `nextflow eval shapes`: ShapeEval of a model's images, answers and edits.

use super::*;

pub fn eval_shapes(args: &EvalShapesArgs, device: &Device) -> Result<()> {
    let config = config_of(&args.model)?;
    let scales = schedule(&config.parts()?.tokenizer, args.size, args.aspect.as_deref())?;
    check_image_sampling(&config, &args.sampling)?;
    if args.batch == 0 {
        return Err(fail("--batch must be at least 1"));
    }
    let (model, info) = load_nextflow_for(&args.model, device, args.batch.min(args.n.max(1) * shapeeval::TASKS.len()), scales.as_deref(), true, false)?;
    let mut opts = image_options(&model, &args.sampling)?;
    let t = &model.parts().tokenizer;
    let (height, width) = match scales.as_ref().and_then(|s| s.last()) {
        Some(&[h, w]) => (h * t.patch_size, w * t.patch_size),
        None => (t.image_size, t.image_size),
    };
    opts.scales = scales;
    let prompts = shapeeval::eval_prompts(args.n, args.prompt_seed);
    let image_file = |dir: &Path, index: usize| dir.join(format!("{index:05}.png"));
    if let Some(dir) = &args.save_images {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: cannot create the folder: {e}", dir.display())))?;
        if !args.model.force {
            if let Some(p) = prompts.iter().map(|e| image_file(dir, e.index)).find(|p| p.exists()) {
                return Err(fail(format!("{} exists; pass --force to overwrite the images in {}", p.display(), dir.display())));
            }
        }
    }
    let bos = model.parts().vocabulary.id("<bos>").expect("validated") as u32;
    let started = Instant::now();
    let mut results = Vec::new();
    let batch = args.batch.max(1);
    for (c, chunk) in prompts.chunks(batch).enumerate() {
        let start = c * batch;
        let seqs: Vec<Sequence> = chunk
            .iter()
            .map(|e| {
                let mut s = Sequence::new();
                s.text(&[bos]).text(&model.encode_words(&e.prompt)?);
                Ok(s)
            })
            .collect::<nextflow_model::Result<_>>()?;
        let mut un = Sequence::new();
        un.text(&[bos]);
        let o = ImageOptions { seed: opts.seed + start as u64, ..opts.clone() };
        let g = model.generate_images(&seqs, &vec![un; seqs.len()], &o, &mut |_, _, _| {})?;
        for (e, rgb) in chunk.iter().zip(to_rgb8(&g.images)?) {
            let (ok, _) = shapeeval::score_image(&rgb, (height, width), e);
            results.push((e.task.clone(), ok));
            if let Some(dir) = &args.save_images {
                write_png(Some(&image_file(dir, e.index)), &rgb, width, height, None, args.model.force)?;
            }
        }
        status(format_args!("t2i {}/{} images, {:.1} s", results.len(), prompts.len(), started.elapsed().as_secs_f64()));
    }
    end_status();
    let t2i = shapeeval::score_t2i(&results);
    let (understanding, editing) = eval_other(&model, args, &ImageOptions { scales: None, ..opts.clone() })?;
    if args.json {
        print_json(&report::EvalReport {
            meta: info.meta.clone(),
            n_per_task: args.n,
            canvas: format!("{width}x{height}"),
            prompt_seed: args.prompt_seed,
            sampler: sampler_of(&opts),
            seed: opts.seed,
            t2i: serde_json::to_value(&t2i)?,
            correct: results.iter().map(|(_, ok)| *ok).collect(),
            understanding,
            editing,
            timings_ms: report::EvalTimings { load: ms(info.load), total: ms(started.elapsed()) },
        })?;
    } else {
        println!("ShapeEval t2i ({} prompts per task, seed {}, {width}x{height} px):", args.n, args.prompt_seed);
        for task in shapeeval::TASKS {
            println!("  {task:14} {:.3}", t2i.get(task).unwrap_or(0.0));
        }
        println!("  {:14} {:.3}", "overall", t2i.overall);
        for (name, scores) in [("understanding (exact match)", &understanding), ("editing (success)", &editing)] {
            println!("{name}:");
            for (k, v) in scores.as_object().into_iter().flatten() {
                println!("  {k:14} {}", v);
            }
        }
        ui::note(format_args!("{:.1} s", started.elapsed().as_secs_f64()));
    }
    if let Some(min) = args.min_overall {
        if t2i.overall < min {
            return Err(fail(format!("overall t2i score {:.3} is below --min-overall {min}", t2i.overall)));
        }
    }
    Ok(())
}

/// Understanding accuracy per question type and editing success per edit type, on the
/// shipped evaluation set (`model/assets/shapeeval_set.json`, the reference's samples).
fn eval_other(model: &NextFlow, args: &EvalShapesArgs, opts: &ImageOptions) -> Result<(serde_json::Value, serde_json::Value)> {
    let (understanding, editing) = shapeeval::eval_set::load()?;
    let tok = model.text.as_ref().ok_or_else(|| fail("random weights cannot answer questions"))?;
    let per_type = |kinds: Vec<(&str, bool)>| -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for kind in kinds.iter().map(|(k, _)| *k).collect::<std::collections::BTreeSet<_>>() {
            let of: Vec<bool> = kinds.iter().filter(|(k, _)| *k == kind).map(|(_, ok)| *ok).collect();
            m.insert(kind.to_string(), serde_json::json!((of.iter().filter(|&&x| x).count() as f64 / of.len() as f64 * 1000.0).round() / 1000.0));
        }
        serde_json::Value::Object(m)
    };
    let take = |kind: &str, i: usize| -> bool { let _ = kind; i < args.n_other };
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut u = Vec::new();
    for case in &understanding {
        let i = seen.entry(case.kind.clone()).or_default();
        *i += 1;
        if !take(&case.kind, *i - 1) {
            continue;
        }
        let indices = model.encode_image(&from_rgb8(&case.rgb, case.size, model.dtype(), model.device())?)?;
        let word = model.answer_word(&indices, &case.question)?;
        let answer = tok.decode(&[word], true)?;
        u.push((case.kind.as_str(), answer.trim() == case.answer));
        status(format_args!("understanding {}/{}", u.len(), understanding.len().min(4 * args.n_other)));
    }
    end_status();
    seen.clear();
    let mut e = Vec::new();
    for (n, case) in editing.iter().enumerate() {
        let i = seen.entry(case.kind.clone()).or_default();
        *i += 1;
        if !take(&case.kind, *i - 1) {
            continue;
        }
        let indices = model.encode_image(&from_rgb8(&case.rgb, case.size, model.dtype(), model.device())?)?;
        let o = ImageOptions { seed: opts.seed + n as u64, ..opts.clone() };
        let g = model.edit(&indices, &case.instruction, &o, &mut |_, _, _| {})?;
        let after = to_rgb8(&g.images)?.remove(0);
        let ok = shapeeval::edit_success(&case.rgb, &case.instruction, &after, case.size)?;
        e.push((case.kind.as_str(), ok));
        status(format_args!("editing {}/{}", e.len(), editing.len().min(4 * args.n_other)));
    }
    end_status();
    Ok((per_type(u), per_type(e)))
}

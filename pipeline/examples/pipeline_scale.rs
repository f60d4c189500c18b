//! Times `pipeline::parse` on generated pipelines, to check that validation
//! stays linear in the input and that oversized input is refused early.
//!
//! `cargo run -p valkyrie-pipeline --example pipeline_scale -- SHAPE JOBS`
//! where SHAPE is `flat` (one stage), `stages` (4 stages, no `needs`),
//! `chain` (each job needs the previous one), `matrix` (jobs with 4-leg
//! matrices), `flow` (one flow list of JOBS scalars, for the memory
//! bound), `deep` or `deepblock` (flow lists or block mappings nested JOBS
//! deep), `env` (one job with JOBS env keys), `badneeds` (each job needs
//! an undefined job: JOBS errors with did-you-mean hints), `keys` (each job
//! with an unknown key); prints jobs and milliseconds. Peak memory: run it
//! under `/usr/bin/time -v`.

use std::fmt::Write;
use std::time::Instant;

fn pipeline(shape: &str, jobs: usize) -> String {
    let mut y = String::new();
    match shape {
        "flow" => {
            y.push_str("jobs:\n  a:\n    steps: [");
            for i in 0..jobs {
                let _ = write!(y, "x{i},");
            }
            y.push_str("x]\n");
            return y;
        }
        "deep" => {
            y.push_str("jobs:\n  a:\n    steps: ");
            y.push_str(&"[".repeat(jobs));
            y.push_str(&"]".repeat(jobs));
            y.push('\n');
            return y;
        }
        "deepblock" => {
            y.push_str("jobs:\n");
            for i in 0..jobs {
                let _ = writeln!(y, "{}k{i}:", " ".repeat(i + 1));
            }
            return y;
        }
        "env" => {
            y.push_str("jobs:\n  a:\n    steps: [x]\n    env:\n");
            for i in 0..jobs {
                let _ = writeln!(y, "      K{i}: v");
            }
            return y;
        }
        "stages" => y.push_str("stages: [s0, s1, s2, s3]\n"),
        _ => {}
    }
    y.push_str("jobs:\n");
    for i in 0..jobs {
        let _ = writeln!(y, "  job-{i}:");
        match shape {
            "stages" => {
                let _ = writeln!(y, "    stage: s{}", i * 4 / jobs.max(1));
            }
            "chain" if i > 0 => {
                let _ = writeln!(y, "    needs: [job-{}]", i - 1);
            }
            "matrix" => y.push_str("    matrix:\n      os: [linux, mac]\n      rust: [stable, beta]\n"),
            "badneeds" => {
                let _ = writeln!(y, "    needs: [jobx-{i}]");
            }
            "keys" => y.push_str("    stepz: 1\n"),
            _ => {}
        }
        let _ = writeln!(
            y,
            "    env: {{N: \"{i}\"}}\n    steps:\n      - run: echo job {i}"
        );
    }
    y
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shape = args.get(1).map_or("flat", String::as_str);
    let jobs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let text = pipeline(shape, jobs);
    let start = Instant::now();
    let result = valkyrie_pipeline::parse("scale.yaml", &text);
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(p) => println!(
            "{shape} {jobs}: {} bytes, valid, {} jobs, {ms:.1} ms",
            text.len(),
            p.jobs.len()
        ),
        Err(e) => println!(
            "{shape} {jobs}: {} bytes, refused in {ms:.1} ms: {}",
            text.len(),
            e.0.first().map(|e| e.to_string()).unwrap_or_default()
        ),
    }
}

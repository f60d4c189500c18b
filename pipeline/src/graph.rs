//! The dependency graph of a pipeline in size linear in the file.
//!
//! A job without `needs` waits for every job of the earlier stages; listing
//! those edges one by one makes a two-stage pipeline of n jobs hold n²/4
//! edges. Instead there is one barrier node per stage, `B(k)` = "every job
//! of stages 0..=k": `B(k)` depends on `B(k-1)` and on the jobs of stage
//! `k`, and a stage-ordered job of stage `k` depends on `B(k-1)` alone.
//! Cycle detection and ordering are one iterative depth-first search (no
//! recursion, so a long chain of `needs` cannot overflow the stack).

/// How one job's dependencies are given.
pub(crate) struct Deps<'a> {
    /// Index of its stage.
    pub stage: usize,
    /// Its `needs` (job indices), or `None` for "every job of the earlier
    /// stages".
    pub needs: Option<&'a [usize]>,
}

/// Either every job in an order where each comes after everything it
/// depends on, or a cycle as a path of job indices that starts and ends on
/// the same job.
pub(crate) fn order(jobs: &[Deps<'_>], stages: usize) -> Result<Vec<usize>, Vec<usize>> {
    let n = jobs.len();
    let mut stage_jobs: Vec<Vec<usize>> = vec![Vec::new(); stages];
    for (i, job) in jobs.iter().enumerate() {
        if let Some(list) = stage_jobs.get_mut(job.stage) {
            list.push(i);
        }
    }
    // Node v < n is job v; node n + k is the barrier of stage k.
    let edges = |v: usize| -> Box<dyn Iterator<Item = usize> + '_> {
        if v < n {
            let job = &jobs[v];
            match job.needs {
                Some(needs) => Box::new(needs.iter().copied()),
                None if job.stage > 0 => Box::new(std::iter::once(n + job.stage - 1)),
                None => Box::new(std::iter::empty()),
            }
        } else {
            let k = v - n;
            let previous = (k > 0).then(|| n + k - 1);
            Box::new(previous.into_iter().chain(stage_jobs[k].iter().copied()))
        }
    };

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; n + stages];
    let mut out = Vec::with_capacity(n);
    let mut stack: Vec<(usize, Box<dyn Iterator<Item = usize> + '_>)> = Vec::new();
    for root in 0..n {
        if marks[root] != Mark::New {
            continue;
        }
        marks[root] = Mark::Active;
        stack.push((root, edges(root)));
        while let Some((v, next)) = stack.last_mut() {
            let v = *v;
            match next.next() {
                Some(w) => match marks[w] {
                    Mark::New => {
                        marks[w] = Mark::Active;
                        stack.push((w, edges(w)));
                    }
                    Mark::Active => {
                        let start = stack.iter().position(|(s, _)| *s == w).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[start..]
                            .iter()
                            .map(|(s, _)| *s)
                            .filter(|&s| s < n)
                            .collect();
                        if w < n {
                            cycle.push(w);
                        } else if let Some(&first) = cycle.first() {
                            cycle.push(first);
                        }
                        return Err(cycle);
                    }
                    Mark::Done => {}
                },
                None => {
                    marks[v] = Mark::Done;
                    if v < n {
                        out.push(v);
                    }
                    stack.pop();
                }
            }
        }
    }
    Ok(out)
}

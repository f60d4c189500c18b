//! The in-place display of `vk run` on a terminal: job output scrolls above a
//! table with one line per job, which stays at the bottom of the screen.
//!
//! Drawing is batched: output lines and table changes are collected and
//! written at most once per `interval` (and when `MAX_PENDING_LINES` lines
//! are waiting), each time as one write: erase the table, the waiting output
//! grouped by job, the table again. So the bytes written for N output lines
//! are O(N) plus one table per interval, not one table per line; and two
//! busy jobs' output alternates at most once per interval instead of line by
//! line. The screen takes `now` from its caller and never reads a clock, so
//! tests drive it on a virtual one.

use std::io::{self, Write};
use std::time::{Duration, Instant};

/// Output lines that force a draw before the interval is over (bounds the
/// memory held for a burst of output).
const MAX_PENDING_LINES: usize = 2000;

/// The bottom-of-screen table with output scrolling above it.
pub struct LiveScreen<W: Write> {
    out: W,
    /// Terminal width: table lines are cut to it so that each takes exactly
    /// one terminal row (the erase step counts rows).
    width: usize,
    interval: Duration,
    table: Vec<String>,
    /// Table rows on the screen now.
    drawn: usize,
    /// Waiting output, grouped by job in order of first appearance.
    pending: Vec<(String, Vec<String>)>,
    pending_lines: usize,
    dirty: bool,
    last_draw: Option<Instant>,
}

impl<W: Write> LiveScreen<W> {
    /// A screen drawing to `out`, `width` columns wide, at most once per `interval`.
    pub fn new(out: W, width: usize, interval: Duration) -> Self {
        Self {
            out,
            width: width.max(20),
            interval,
            table: Vec::new(),
            drawn: 0,
            pending: Vec::new(),
            pending_lines: 0,
            dirty: false,
            last_draw: None,
        }
    }

    /// Replaces the table (drawn at the next due draw if it changed).
    pub fn set_table(&mut self, lines: Vec<String>) {
        if lines != self.table {
            self.table = lines;
            self.dirty = true;
        }
    }

    /// Queues one line of a job's output (already styled, without newline).
    pub fn log(&mut self, job: &str, line: String) {
        match self.pending.iter_mut().find(|(name, _)| name == job) {
            Some((_, lines)) => lines.push(line),
            None => self.pending.push((job.to_owned(), vec![line])),
        }
        self.pending_lines += 1;
        self.dirty = true;
    }

    /// Draws if something changed and the interval since the last draw is
    /// over, or if too much output is waiting.
    pub fn poll(&mut self, now: Instant) -> io::Result<()> {
        let due = self
            .last_draw
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if self.dirty && (due || self.pending_lines >= MAX_PENDING_LINES) {
            self.draw(now)?;
        }
        Ok(())
    }

    /// Draws whatever is waiting now, regardless of the interval.
    pub fn finish(&mut self, now: Instant) -> io::Result<()> {
        if self.dirty {
            self.draw(now)?;
        }
        Ok(())
    }

    /// The writer, e.g. to count what was written.
    #[cfg(test)]
    pub fn writer(&self) -> &W {
        &self.out
    }

    fn draw(&mut self, now: Instant) -> io::Result<()> {
        let mut buf = Vec::with_capacity(256 * (self.table.len() + self.pending_lines));
        if self.drawn > 0 {
            // Up to the table's first row, then erase to the end of the screen.
            write!(buf, "\r\x1b[{}A\x1b[J", self.drawn)?;
        }
        for (_, lines) in self.pending.drain(..) {
            for line in lines {
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
            }
        }
        self.pending_lines = 0;
        for line in &self.table {
            buf.extend_from_slice(console::truncate_str(line, self.width - 1, "…").as_bytes());
            buf.push(b'\n');
        }
        self.drawn = self.table.len();
        self.dirty = false;
        self.last_draw = Some(now);
        self.out.write_all(&buf)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(jobs: usize, tick: usize) -> Vec<String> {
        (0..jobs)
            .map(|j| {
                format!("job-{j:<20} running   runner-1        {tick:>6}s  step 3/7: cargo test --workspace")
            })
            .collect()
    }

    #[test]
    fn bytes_written_grow_with_the_output_not_with_output_times_table() {
        const LINES: usize = 10_000;
        const JOBS: usize = 12;
        let interval = Duration::from_millis(100);
        let mut screen = LiveScreen::new(Vec::new(), 200, interval);
        let start = Instant::now();
        let mut log_bytes = 0;
        for i in 0..LINES {
            // One line per virtual millisecond from two jobs, alternating,
            // and a table change with every line (elapsed times tick).
            let now = start + Duration::from_millis(i as u64);
            screen.set_table(table(JOBS, i));
            let line = format!("[job-{}] compiling crate number {i}", i % 2);
            log_bytes += line.len() + 1;
            screen.log(if i % 2 == 0 { "job-0" } else { "job-1" }, line);
            screen.poll(now).unwrap();
        }
        screen
            .finish(start + Duration::from_millis(LINES as u64))
            .unwrap();
        let written = screen.writer().len();
        let table_bytes: usize = table(JOBS, LINES).iter().map(|l| l.len() + 1).sum::<usize>() + 16;
        // 10 s of virtual time at one draw per 100 ms: at most 101 tables.
        let draws = LINES / 100 + 2;
        assert!(
            written <= log_bytes + draws * table_bytes,
            "{written} bytes for {log_bytes} bytes of output and {draws} tables of {table_bytes}"
        );
        // What redrawing per line would have cost, for scale.
        assert!(written * 20 < LINES * table_bytes, "{written}");
        let text = String::from_utf8(screen.writer().clone()).unwrap();
        assert_eq!(
            text.matches("compiling crate").count(),
            LINES,
            "no output line is lost"
        );
    }

    #[test]
    fn output_within_one_interval_is_grouped_by_job_in_order() {
        let mut screen = LiveScreen::new(Vec::new(), 80, Duration::from_secs(1));
        let start = Instant::now();
        screen.set_table(vec!["table".into()]);
        screen.poll(start).unwrap();
        for i in 0..6 {
            screen.log(["a", "b"][i % 2], format!("{}{i}", ["a", "b"][i % 2]));
            screen.poll(start + Duration::from_millis(i as u64)).unwrap();
        }
        screen.finish(start + Duration::from_millis(10)).unwrap();
        let text = String::from_utf8(screen.writer().clone()).unwrap();
        let body = text.split("\x1b[J").nth(1).expect("the table was erased once");
        assert_eq!(body, "a0\na2\na4\nb1\nb3\nb5\ntable\n");
    }

    #[test]
    fn table_rows_are_cut_to_the_terminal_width() {
        let mut screen = LiveScreen::new(Vec::new(), 30, Duration::from_secs(1));
        screen.set_table(vec!["x".repeat(100)]);
        screen.finish(Instant::now()).unwrap();
        let text = String::from_utf8(screen.writer().clone()).unwrap();
        assert_eq!(console::measure_text_width(text.trim_end()), 29, "{text}");
    }

    #[test]
    fn nothing_is_drawn_when_nothing_changed() {
        let mut screen = LiveScreen::new(Vec::new(), 80, Duration::from_millis(10));
        let start = Instant::now();
        screen.set_table(vec!["same".into()]);
        screen.poll(start).unwrap();
        let after_first = screen.writer().len();
        for i in 1..100 {
            screen.set_table(vec!["same".into()]);
            screen.poll(start + Duration::from_millis(i * 20)).unwrap();
        }
        assert_eq!(screen.writer().len(), after_first);
    }
}

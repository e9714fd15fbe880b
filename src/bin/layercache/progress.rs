//! Progress on stderr for long commands (`lookup`, `put`, `gc`, `migrate`).
//!
//! A thread polls the library's counters ([`layercache::Progress`], which the walks add to
//! once per window of 4096 entries, never per entry) ten times a second and draws them with
//! indicatif: entries walked (out of the stored row count when there is one, with an ETA),
//! files and bytes hashed, and the rate. A step the library does not count (a migration, a gc)
//! shows a spinner with the elapsed time. Shown only when stderr is a terminal; `--quiet` turns
//! it off, `--progress` forces it (on a stderr that is not a terminal, as plain lines, at most
//! one per second, and the last one). The drawing is throttled to 10 Hz, so watching costs
//! nothing measurable.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use layercache::{Progress, ProgressSnapshot};

/// How often the counters are read and drawn on a terminal.
const TICK: Duration = Duration::from_millis(100);
/// What a step without counters shows.
const SPINNER: &str = "{prefix}: {spinner} {elapsed}";
/// How often a plain line is written when stderr is not a terminal (`--progress`).
const LINE_EVERY: Duration = Duration::from_secs(1);

/// The global `--quiet` / `--progress` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// When stderr is a terminal (the default).
    Auto,
    /// Never (`--quiet`).
    Never,
    /// Always (`--progress`), as plain lines when stderr is not a terminal.
    Always,
}

impl When {
    /// From the two global flags (clap refuses both at once).
    pub fn from_flags(quiet: bool, progress: bool) -> Self {
        match (quiet, progress) {
            (true, _) => When::Never,
            (false, true) => When::Always,
            (false, false) => When::Auto,
        }
    }
}

static WHEN: OnceLock<When> = OnceLock::new();

/// Sets the choice for this process (from `main`, once).
pub fn set_when(when: When) {
    let _ = WHEN.set(when);
}

/// A progress display running on its own thread until [`Display::finish`] (or drop).
pub struct Display {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Display {
    /// Starts showing `progress` under `label`, if the process's choice ([`set_when`]) and
    /// stderr say so; without counters, a spinner with the elapsed time.
    pub fn start(label: &str, progress: Option<Arc<Progress>>) -> Display {
        let stop = Arc::new(AtomicBool::new(false));
        let when = WHEN.get().copied().unwrap_or(When::Auto);
        let tty = std::io::stderr().is_terminal();
        let lines = Lines::default();
        let last_line = lines.force.clone();
        let target = match (when, tty) {
            (When::Never, _) | (When::Auto, false) => None,
            (_, true) => Some(ProgressDrawTarget::stderr_with_hz(10)),
            (When::Always, false) => {
                Some(ProgressDrawTarget::term_like_with_hz(Box::new(lines), 10))
            }
        };
        let Some(target) = target else {
            return Display { stop, thread: None };
        };
        // Styled and labelled before it can draw (a bare bar would draw indicatif's default).
        let bar = ProgressBar::hidden();
        if let Ok(style) = ProgressStyle::with_template(SPINNER) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_string());
        bar.set_draw_target(target);
        let theirs = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("layercache-progress".into())
            .spawn(move || run(&bar, &theirs, progress.as_deref(), tty, &last_line))
            .ok();
        Display { stop, thread }
    }

    /// Draws the last counts and stops.
    pub fn finish(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The polling loop of the display thread.
fn run(
    bar: &ProgressBar,
    stop: &AtomicBool,
    progress: Option<&Progress>,
    tty: bool,
    last_line: &AtomicBool,
) {
    let mut shown: Option<ProgressSnapshot> = None;
    loop {
        let done = stop.load(Ordering::Relaxed);
        match progress {
            Some(p) => {
                let now = p.snapshot();
                if shown != Some(now) || done {
                    draw(bar, &now);
                    shown = Some(now);
                }
            }
            // The spinner it was made with.
            None => bar.tick(),
        }
        if done {
            break;
        }
        std::thread::sleep(TICK);
    }
    last_line.store(true, Ordering::Relaxed);
    if tty {
        bar.finish_and_clear();
    } else {
        bar.finish();
    }
}

/// One reading onto the bar: a bar with an ETA when the stored rows give a total, else a
/// spinner.
fn draw(bar: &ProgressBar, s: &ProgressSnapshot) {
    let known = s.expected_entries > 0;
    let template = if known {
        "{prefix}: {wide_bar} {pos}/{len} entries, {msg}, ETA {eta}"
    } else {
        "{prefix}: {spinner} {pos} entries, {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    if known {
        bar.set_length(s.expected_entries.max(s.entries_walked));
    }
    bar.set_position(s.entries_walked);
    let secs = bar.elapsed().as_secs_f64().max(1e-3);
    bar.set_message(format!(
        "{} files hashed ({}), {:.0} entries/s",
        s.files_hashed,
        HumanBytes(s.bytes_hashed),
        s.entries_walked as f64 / secs
    ));
}

/// A draw target for a stderr that is not a terminal (`--progress` into a pipe or a log): a
/// redraw is one plain line, at most one per [`LINE_EVERY`], and the last one always.
#[derive(Debug, Default)]
struct Lines {
    last: std::sync::Mutex<Option<Instant>>,
    /// Set before the final draw: that line is always written.
    force: Arc<AtomicBool>,
}

impl Lines {
    fn line(&self, s: &str) -> std::io::Result<()> {
        let s = s.trim_end();
        if s.trim().is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let always = self.force.load(Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            if !always && last.is_some_and(|t| now.duration_since(t) < LINE_EVERY) {
                return Ok(());
            }
            *last = Some(now);
        }
        writeln!(std::io::stderr().lock(), "{s}")
    }
}

impl TermLike for Lines {
    fn width(&self) -> u16 {
        100
    }

    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.line(s)
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.line(s)
    }

    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

//! One table per scenario: a row per metric, a column per server, and the ratios
//! Hubbub / peer. Printed, and written as Markdown to `<out>/<date>-<scenario>.md`.

use crate::servers::Kind;
use crate::sys;
use std::path::{Path, PathBuf};

/// How a metric is printed.
#[derive(Clone, Copy, Debug)]
pub enum Fmt {
    Int,
    Dec(usize),
}

/// One server's measurements, in row order.
#[derive(Default, Debug, Clone)]
pub struct Column {
    pub rows: Vec<(String, Option<f64>, Fmt, bool)>,
    /// Things worth saying about this server's run (errors, caps).
    pub notes: Vec<String>,
    /// The column's heading instead of the server's name (the cluster scenario's columns are
    /// all Hubbub, in different set-ups); a table with labelled columns has no ratios.
    pub label: Option<String>,
}

impl Column {
    /// A metric with a meaningful Hubbub / peer ratio.
    pub fn metric(&mut self, label: &str, value: Option<f64>, fmt: Fmt) {
        self.rows.push((label.to_owned(), value, fmt, true));
    }

    /// A count or setting: no ratio.
    pub fn plain(&mut self, label: &str, value: Option<f64>, fmt: Fmt) {
        self.rows.push((label.to_owned(), value, fmt, false));
    }

    pub fn get(&self, label: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.0 == label).and_then(|r| r.1)
    }
}

pub struct Report {
    pub scenario: String,
    pub quick: bool,
    pub params: Vec<(String, String)>,
    pub columns: Vec<(Kind, Column)>,
    pub targets: Vec<String>,
    pub notes: Vec<String>,
}

fn fmt(v: Option<f64>, f: Fmt) -> String {
    match (v, f) {
        (None, _) => "–".into(),
        (Some(v), _) if !v.is_finite() => "–".into(),
        (Some(v), Fmt::Int) => group(v.round() as i64),
        (Some(v), Fmt::Dec(d)) => format!("{v:.d$}"),
    }
}

/// 1234567 → "1,234,567".
fn group(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let (date, time) = sys::now_utc();
        let mut s =
            format!("# Hubbub bench: {}{}\n\n", self.scenario, if self.quick { " (quick)" } else { "" });
        s.push_str(&format!("- Date: {date} {time}\n"));
        s.push_str(&format!("- Machine: {}\n", sys::machine()));
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        s.push_str(&format!(
            "- Load average when the table was written (1, 5, 15 min): {}\n",
            load.join(" ")
        ));
        s.push_str("- Client and servers share the machine: the load generator (Rust, tokio) runs beside the server under test.\n");
        let params: Vec<String> = self.params.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s.push_str(&format!("- Parameters: {}\n\n", params.join(", ")));

        let kinds: Vec<Kind> = self.columns.iter().map(|c| c.0).collect();
        let labelled = self.columns.iter().any(|c| c.1.label.is_some());
        let hubbub = if labelled { None } else { self.columns.iter().position(|c| c.0 == Kind::Hubbub) };
        let peers: Vec<usize> = (0..kinds.len()).filter(|&i| Some(i) != hubbub).collect();
        s.push_str("| metric |");
        for (k, col) in &self.columns {
            s.push_str(&format!(" {} |", col.label.as_deref().unwrap_or(k.name())));
        }
        if hubbub.is_some() {
            for &p in &peers {
                s.push_str(&format!(" hubbub / {} |", kinds[p].name()));
            }
        }
        s.push_str("\n|---|");
        for _ in &kinds {
            s.push_str("---:|");
        }
        if hubbub.is_some() {
            for _ in &peers {
                s.push_str("---:|");
            }
        }
        s.push('\n');
        let labels: Vec<(String, Fmt, bool)> = self
            .columns
            .iter()
            .max_by_key(|c| c.1.rows.len())
            .map(|c| c.1.rows.iter().map(|r| (r.0.clone(), r.2, r.3)).collect())
            .unwrap_or_default();
        for (label, f, ratio) in labels {
            s.push_str(&format!("| {label} |"));
            for (_, col) in &self.columns {
                s.push_str(&format!(" {} |", fmt(col.get(&label), f)));
            }
            if let Some(h) = hubbub {
                for &p in &peers {
                    let r = match (ratio, self.columns[h].1.get(&label), self.columns[p].1.get(&label)) {
                        (true, Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                        _ => "–".into(),
                    };
                    s.push_str(&format!(" {r} |"));
                }
            }
            s.push('\n');
        }
        if !self.targets.is_empty() {
            s.push_str("\nTargets (reported, not asserted):\n");
            for t in &self.targets {
                s.push_str(&format!("- {t}\n"));
            }
        }
        let mut notes = self.notes.clone();
        for (k, col) in &self.columns {
            let name = col.label.as_deref().unwrap_or(k.name());
            notes.extend(col.notes.iter().map(|n| format!("{name}: {n}")));
        }
        if !notes.is_empty() {
            s.push_str("\nNotes:\n");
            for n in notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }

    /// Prints the table and, with `out`, writes it to `<out>/<date>-<scenario>[-quick].md`.
    pub fn emit(&self, out: Option<&Path>) -> Option<PathBuf> {
        let text = self.markdown();
        println!("\n{text}");
        let dir = out?;
        let (date, _) = sys::now_utc();
        let path = dir.join(format!("{date}-{}{}.md", self.scenario, if self.quick { "-quick" } else { "" }));
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text)) {
            eprintln!("cannot write {}: {e}", path.display());
            return None;
        }
        eprintln!("wrote {}", path.display());
        Some(path)
    }
}

/// `met` / `not met` for a target line.
pub fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

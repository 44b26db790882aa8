//! The assistants' system prompts: Chinese defaults kept as files under
//! `prompts/` (compiled in), each replaceable by a file of the same name in
//! `PROMPTS_DIR`.

use std::path::Path;

use anyhow::Context;

use crate::ids::SessionKind;

/// What polishing does when the user gives no instruction.
pub const DEFAULT_OPTIMIZE_INSTRUCTION: &str = "润色这段文字，使其更通顺、准确、专业";

/// Longest prompt file accepted from `PROMPTS_DIR`.
const MAX_PROMPT_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Prompts {
    generate: String,
    optimize: String,
    search: String,
}

impl Default for Prompts {
    fn default() -> Self {
        Self {
            generate: include_str!("../../prompts/generate.md").trim().to_owned(),
            optimize: include_str!("../../prompts/optimize.md").trim().to_owned(),
            search: include_str!("../../prompts/search.md").trim().to_owned(),
        }
    }
}

impl Prompts {
    /// The defaults, with `generate.md`, `optimize.md` and `search.md` from
    /// `dir` where present. A file that is there but unreadable, empty or
    /// oversized is a start-up error, not a silent fallback.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut prompts = Self::default();
        let Some(dir) = dir else { return Ok(prompts) };
        anyhow::ensure!(dir.is_dir(), "PROMPTS_DIR {} is not a directory", dir.display());
        for kind in SessionKind::ALL {
            let path = dir.join(format!("{}.md", kind.as_str()));
            if !path.exists() {
                continue;
            }
            let size = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
            anyhow::ensure!(size <= MAX_PROMPT_BYTES, "{} is larger than 64 KiB", path.display());
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            anyhow::ensure!(!text.trim().is_empty(), "{} is empty", path.display());
            *prompts.slot(kind) = text.trim().to_owned();
            tracing::info!(prompt = kind.as_str(), path = %path.display(), "system prompt overridden");
        }
        Ok(prompts)
    }

    fn slot(&mut self, kind: SessionKind) -> &mut String {
        match kind {
            SessionKind::Generate => &mut self.generate,
            SessionKind::Optimize => &mut self.optimize,
            SessionKind::Search => &mut self.search,
        }
    }

    pub fn system(&self, kind: SessionKind) -> &str {
        match kind {
            SessionKind::Generate => &self.generate,
            SessionKind::Optimize => &self.optimize,
            SessionKind::Search => &self.search,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_chinese_and_files_override_them() {
        let p = Prompts::default();
        for kind in SessionKind::ALL {
            assert!(p.system(kind).chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)), "{kind:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("optimize.md"), "只改标点。\n").unwrap();
        let p = Prompts::load(Some(dir.path())).unwrap();
        assert_eq!(p.system(SessionKind::Optimize), "只改标点。");
        assert_eq!(p.system(SessionKind::Generate), Prompts::default().system(SessionKind::Generate));
        std::fs::write(dir.path().join("search.md"), "  \n").unwrap();
        assert!(Prompts::load(Some(dir.path())).is_err(), "an empty override is an error");
        assert!(Prompts::load(Some(&dir.path().join("missing"))).is_err());
    }
}

//! The virtualenv `scripts/services` installs PySpark and DuckDB in
//! (`TANDEM_PYSPARK_VENV`, default `~/.cache/tandem/pyspark`).

use std::path::PathBuf;

/// Its `spark-submit` and its Python, when both are there.
pub fn venv() -> Option<(PathBuf, PathBuf)> {
    let venv = std::env::var_os("TANDEM_PYSPARK_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/tandem/pyspark"))
        })?;
    let submit = venv.join("bin/spark-submit");
    let python = venv.join("bin/python");
    (submit.exists() && python.exists()).then_some((submit, python))
}

//! Host daemon library (see README.md). Filled in by the control-protocol work.

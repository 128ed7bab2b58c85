//! handover operator.

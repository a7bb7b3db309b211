//! Final-answer extraction and equivalence (being written).

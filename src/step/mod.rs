//! Code-augmented CoT steps (being written).

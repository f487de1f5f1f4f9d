//! Transactional inbox (being built).

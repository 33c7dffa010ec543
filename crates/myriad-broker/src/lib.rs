//! Myriad broker (being written).

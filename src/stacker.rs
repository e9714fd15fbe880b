//! The stacker directory layout, mapped onto layer inputs.

//! Reading a cache for people and tools: entry listings, row dumps, stats, integrity checks.

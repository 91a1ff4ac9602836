//! `vmfinal check` for qcow2: headers, tables, refcounts.
//! TODO(helper): implement.

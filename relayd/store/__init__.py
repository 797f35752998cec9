"""Autosave: what is kept of a PV (`rows`), the SQLite file (`sqlite`), the writer thread
that feeds it from the CA process (`writer`), the default path (`paths`) and
``relayd autosave export|import`` (`cli`)."""

"""Autosave: what is kept of a PV and the one gate back to a PV (`rows`), the SQLite file
(`sqlite`), the lock that keeps a second relay off it (`lock`), the writer thread that
feeds it from the CA process (`writer`), the default path (`paths`) and
``relayd autosave export|import`` (`cli`)."""

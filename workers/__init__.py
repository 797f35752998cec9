"""relayd's worker processes, one package each, started by the relayd supervisor
(``python -m workers.<name>``), never by hand. A worker takes outside traffic in and
forwards it to the CA process over the internal pipe; it imports `relayd`, and nothing
in `relayd` imports it."""

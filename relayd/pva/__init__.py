"""pvAccess: every relay PV also served over PVA, from the CA process (docs/PVA.md).

The only package that imports p4p. `nt` maps PV states to normative types and puts
back; `provider` is all that p4p's own threads run (answer searches, hand out channels,
queue everything else); `bridge` is the CA loop's side: it applies what was queued
through the same core path as a CA put, and posts every change.
"""

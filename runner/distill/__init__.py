"""Knowledge distillation: the `distill` config group (`conf/distill/<name>.yaml`).

base.py holds the method's hooks (`Distiller`, which is also `distill=none`) and the shared pieces; one
module per method: kd (offline, any divergence), dml and bdkd (online, two networks), pskd, saf and mesa
(self-distillation), nd (KD++) and dhkd (dual head). teacher.py loads a trained teacher from a run folder. Methods see the run through a narrow
`MethodContext` (runner/context.py), never the train loop.
"""

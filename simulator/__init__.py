"""How a Veil scenario runs.

schema.py     the scenario (pydantic, no torch); yamlio.py its bounded YAML reader
cli.py        `veil validate | run | report | compare | attacks`; launcher.py starts or resumes a run
sweep.py      several runs of one scenario (--seeds, list-valued --set)
stages/       one module per stage, registered in run order: its server-side plan, a party's work
              for one task, and the records its replies become (base.py: Stage, Server, register)
engines/      carry tasks and replies: `drive` (the server's loop), inline.py (one process),
              flower/ (the only package that imports flwr: codec, audited Grid, session, apps, launch;
              app.py: Veil as a Flower App, for `flwr run .`)
protocol.py   Veil's own task and reply types (plain arrays, config, typed records)
node.py       a party's side: builds its view from its role and runs a stage's work; cache.py keeps
              what a node loaded (scenario, dataset, shared nets) once per process
roles.py      who takes part (entity, data owner, authorised user, adversary); views.py what each may
              touch (its private directory, the pool, the public codes, its keys), every read audited
sealing.py    end-to-end encryption to one party (X25519 + AES-GCM): the server relays ciphertext
pool.py       the pool of poisoned features; rundir.py the run directory (manifest, results, audit)
progress.py   progress inside a stage: each node's progress/<party>.json, the driver's live table,
              plain lines and progress.log
"""

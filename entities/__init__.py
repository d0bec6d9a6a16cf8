"""Who takes part and what each does and knows, as plain torch code; imports neither simulator nor flwr.

entity.py         an entity of Deep Poisoning: pre-train F, C, R; train and measure a private DPM;
                  refine the decider; datasets/ the dataset kinds (a registry, one module
                  each), data.py the partitions among entities;
                  nets.py F, C, R and the DPM; training.py the one training loop (progress.py its
                  progress reports); metrics.py
data_owner.py     the data owner of ambiguated sparse codes and its authorised users; sparse.py the
                  sparsifying autoencoder and ambiguation; keys.py the key file; publication.py what
                  is published; owner_measures.py what the owner measures; codecs.py JPEG
attacks/          the adversaries' attacks (a registry) and the referee's scoring; threats.py the
                  threat models and what each attack needs (no torch)
registry.py       one registry per family (datasets, optimizers, DPM objectives, samplers, feature
                  sources, codecs); recipes.py the typed recipes entity functions take; files.py the
                  one atomic (and private) file writer; grids.py image grids as PNG, to look at;
                  rows.py several arrays (the pool's memory maps) read as one, a batch at a time
"""

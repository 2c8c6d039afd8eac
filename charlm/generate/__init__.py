"""Generation: a streaming sampler, batches of streams for a server, next-character distributions.

Read charlm/reference.py first: its sampling loop is this package's, in plain NumPy. Here the
same loop is made fast, one module per job:

- settings.py: what a stream is asked for and gives back (SampleSettings, Token, Distribution);
- api.py: Generator, one stream, and next_distribution;
- batch.py: Batch, the streams of a server advanced together, with stop strings (stops.py)
  and the choice between the serial and the threaded kernel;
- tape.py: TapedBatch, a server's Batch that writes each step's draws into the streams' rows
  of a Tape, for the request threads to read;
- packing.py: the weights laid out for the step (PackedModel);
- kernels.py: the step itself (every layer, the cell from charlm.cells, the head, the draw);
- draw.py: softmax, temperature, top-k, top-p and the counter-based RNG;
- gemm.py: the matrix products, on a register-tiled micro-kernel.

Every stream, alone (Generator) or among others (Batch), runs through the same kernel, whose
per-stream arithmetic does not depend on the batch, and draws its random numbers from its own
counter-based generator: the same model, prompt, settings and seed give the same text whether
the stream runs alone or in a batch, in this process or another on a machine of the same kind.
"""

from charlm.generate.api import Generator, next_distribution
from charlm.generate.batch import Batch, Event
from charlm.generate.draw import entropy, log_softmax
from charlm.generate.packing import PackedModel, Primed
from charlm.generate.settings import Completion, Distribution, SampleSettings, Token
from charlm.generate.stops import Stops

__all__ = ["Batch", "Completion", "Distribution", "Event", "Generator", "PackedModel",
           "Primed", "SampleSettings", "Stops", "Token", "entropy", "log_softmax",
           "next_distribution"]

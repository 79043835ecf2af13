"""What a machine and an installed model can do: the self-check against stored known
answers (`check`), throughput measurements (`bench`) and synthetic inputs for them
(`synthetic`). The CPU's cores and instruction sets are the core's
(`micronet.runtime.machine`): the ONNX Runtime backend sizes its threads with them.
"""

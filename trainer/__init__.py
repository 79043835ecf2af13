"""MicroNet trainer (needs torch: ``pip install 'micronet-sdk[train]'``)."""

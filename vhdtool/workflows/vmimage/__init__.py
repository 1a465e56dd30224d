"""VM images, as Azure keeps them: one OS disk and any data disks (fixed VHDs, each with a
LUN and host caching) plus metadata, captured by copying every disk, deployed by copying
them again. Modules: capture, deploy, catalog (list/show/delete/orphans), records (the JSON
shapes), disks (what capture accepts), generation (what the OS disk's partition table
says: Hyper-V generation, OS type), names, copies (parallel, all or nothing), render.
"""

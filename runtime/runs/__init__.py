"""Running inputs into an output folder: images and slides one by one (`batch`), cohorts
on a Ray cluster (`cohort`), and the files they leave (`outputs`: formats, atomic writes,
locks, records of progress, the run summary).

Sits above the inference core (`micronet.runtime.detector` and below) and the slide
package; nothing in the core imports it.
"""

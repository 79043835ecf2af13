"""Running inputs into an output folder: images and slides one by one (`batch`), each
through the one procedure `run_input` over an image or a slide source (`image_run`,
`slide_run`); cohorts on a Ray cluster (`cohort`); which inputs a run takes (`inputs`);
and the files they leave: where they go (`folder`: the results, and the records, partial
files and locks in the hidden `.micronet/`), one input's outputs and what a rerun does
with them (`outputs`, `records`, `slide_outputs`), and the run summary (`summary`).

Sits above the inference core (`micronet.runtime.detector` and below) and the slide
package; nothing in the core imports it.
"""

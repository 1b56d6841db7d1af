"""The `ddnm` command line (`cli.main`) and the embedded stack `ddnm serve` supervises
(`cli.embedded`): the library's and the pipeline's front end on one machine."""

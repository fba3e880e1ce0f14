"""Dataset and model descriptions shipped with gill (sources, formats, checksums, licences). Data only."""

"""pydicom's bundled files that pacsd refuses at ingest, and why (docs/conformance.md §1).

Shared by the parser unit tests and the end-to-end corpus test, so both hold the archive
to the same documented policy.
"""

#: file name -> pacsd.errors class raised by parse_instance
REFUSED = {
    "ExplVR_BigEndNoMeta.dcm": "InvalidDicom",      # BI-2: no Part-10 meta
    "ExplVR_LitEndNoMeta.dcm": "InvalidDicom",
    "no_meta.dcm": "InvalidDicom",
    "rtstruct.dcm": "InvalidDicom",                 # no preamble/DICM
    "meta_missing_tsyntax.dcm": "InvalidDicom",     # no TransferSyntaxUID
    "MR_truncated.dcm": "InvalidDicom",             # BI-7: truncated pixel data
    "rtplan_truncated.dcm": "InvalidDicom",         # BI-7
    "DICOMDIR-nooffset": "InvalidDicom",            # item length past its sequence
    "JPEGLSNearLossless_08.dcm": "MissingAttribute",  # BI-3: no Study/Series UIDs
    "JPEGLSNearLossless_16.dcm": "MissingAttribute",
    "SC_rgb_jls_lossy_line.dcm": "MissingAttribute",
    "SC_rgb_jls_lossy_sample.dcm": "MissingAttribute",
    "UN_sequence.dcm": "MissingAttribute",
    "chrSQEncoding.dcm": "MissingAttribute",
    "chrSQEncoding1.dcm": "MissingAttribute",
    "empty_charset_LEI.dcm": "MissingAttribute",
    "nested_priv_SQ.dcm": "MissingAttribute",
    "no_meta_group_length.dcm": "MissingAttribute",
    "priv_SQ.dcm": "MissingAttribute",
}

#: FailureReason each refusal reports in STOW-RS.
FAILURE_REASON = {"InvalidDicom": 0xC000, "MissingAttribute": 0xA900, "InvalidUID": 0xA900}

"""DICOM in and out: MR series <-> volumes (geometry.py, mr.py, series.py), a BraTS study of four series
(study.py), results as DICOM SEG and Parametric Maps (results.py, highdicom) and DICOMweb transfers (web.py).

NIfTI affines are RAS (nibabel); DICOM patient coordinates are LPS: x and y change sign between the two.
"""

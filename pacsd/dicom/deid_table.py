"""DICOM PS3.15 Annex E, Table E.1-1 "Application Level Confidentiality Profile
Attributes", encoded as data for :mod:`pacsd.dicom.deid` (R-E7, R-H3).

One line per attribute: ``(gggg,eeee) Keyword | basic action | option actions``. Option
columns used here (abbreviations of the table's columns):

    dev    Retain Device Identity Option
    inst   Retain Institution Identity Option
    pat    Retain Patient Characteristics Option
    dates  Retain Longitudinal Temporal Information With Full Dates Option
    desc   Clean Descriptors Option
    uids   Retain UIDs Option (listed for completeness; pacsd always remaps UIDs)

Action codes (PS3.15 Table E.1-1 legend): D dummy value, Z zero length (or dummy), X
remove, K keep, C clean, U replace UID consistently; combinations ``Z/D``, ``X/Z``, ``X/D``,
``X/Z/D``, ``X/Z/U*`` as in the standard. Attributes of the table that pacsd's pydicom
dictionary does not know, and the repeating-group rows (curves 50xx, overlay data and
comments 60xx), are handled in :mod:`pacsd.dicom.deid` by group rules.

The rows below were written from the standard's table (not from another
implementation); the patient, performed-step, R, S and T sections were checked against
the standard's text row by row, the rest still need that cross-check (the table is a
subset of the current edition's rows; attributes missing from it are kept, except person
names and non-DICOM UIDs, see :mod:`pacsd.dicom.deid`). tests/security/test_deid.py checks
that every keyword matches its tag in pydicom's data dictionary.
"""
from __future__ import annotations

TABLE = """
(0008,0050) AccessionNumber | Z |
(0018,4000) AcquisitionComments | X | desc=C
(0040,0555) AcquisitionContextSequence | X |
(0008,0022) AcquisitionDate | X/Z | dates=K
(0008,002A) AcquisitionDateTime | X/D | dates=K
(0018,1400) AcquisitionDeviceProcessingDescription | X/D | dev=K desc=C
(0018,9424) AcquisitionProtocolDescription | X | desc=C
(0008,0032) AcquisitionTime | X/Z | dates=K
(0008,0017) AcquisitionUID | U |
(0040,4035) ActualHumanPerformersSequence | X |
(0010,21B0) AdditionalPatientHistory | X | pat=C desc=C
(0038,0010) AdmissionID | X |
(0038,0020) AdmittingDate | X | dates=K
(0008,1084) AdmittingDiagnosesCodeSequence | X | desc=C
(0008,1080) AdmittingDiagnosesDescription | X | desc=C
(0038,0021) AdmittingTime | X | dates=K
(0000,1000) AffectedSOPInstanceUID | X |
(0010,2110) Allergies | X | pat=C desc=C
(4000,0010) Arbitrary | X |
(0040,A078) AuthorObserverSequence | X |
(2200,0005) BarcodeValue | X/Z |
(300A,00C3) BeamDescription | X | desc=C
(300A,00DD) BolusDescription | X | desc=C
(0010,1081) BranchOfService | X |
(0018,1203) CalibrationDateTime | X | dev=K dates=K
(0016,004D) CameraOwnerName | X |
(0018,1007) CassetteID | X | dev=K
(0012,0060) ClinicalTrialCoordinatingCenterName | Z | inst=K
(0012,0082) ClinicalTrialProtocolEthicsCommitteeApprovalNumber | X |
(0012,0081) ClinicalTrialProtocolEthicsCommitteeName | D | inst=K
(0012,0020) ClinicalTrialProtocolID | D |
(0012,0021) ClinicalTrialProtocolName | Z |
(0012,0072) ClinicalTrialSeriesDescription | X | desc=C
(0012,0071) ClinicalTrialSeriesID | X |
(0012,0030) ClinicalTrialSiteID | Z |
(0012,0031) ClinicalTrialSiteName | Z |
(0012,0010) ClinicalTrialSponsorName | D |
(0012,0040) ClinicalTrialSubjectID | D |
(0012,0042) ClinicalTrialSubjectReadingID | D |
(0012,0051) ClinicalTrialTimePointDescription | X | desc=C
(0012,0050) ClinicalTrialTimePointID | Z |
(0040,0310) CommentsOnRadiationDose | X | desc=C
(0040,0280) CommentsOnThePerformedProcedureStep | X | desc=C
(300A,02EB) CompensatorDescription | X | desc=C
(0020,9161) ConcatenationUID | U |
(3010,000F) ConceptualVolumeCombinationDescription | X | desc=C
(3010,0017) ConceptualVolumeDescription | X | desc=C
(3010,0006) ConceptualVolumeUID | U |
(0040,3001) ConfidentialityConstraintOnPatientDataDescription | X |
(0040,0512) ContainerIdentifier | D |
(0008,0023) ContentDate | Z/D | dates=K
(0040,A730) ContentSequence | X |
(0008,0033) ContentTime | Z/D | dates=K
(0008,010D) ContextGroupExtensionCreatorUID | U |
(0018,0010) ContrastBolusAgent | Z/D | desc=C
(0018,A002) ContributionDateTime | X/D | dates=K
(0018,A003) ContributionDescription | X | desc=C
(0010,2150) CountryOfResidence | X |
(0008,9123) CreatorVersionUID | U |
(0040,A307) CurrentObserverTrial | X |
(0038,0300) CurrentPatientLocation | X |
(0008,0025) CurveDate | X | dates=K
(0008,0035) CurveTime | X | dates=K
(0040,A07C) CustodialOrganizationSequence | X | inst=K
(FFFC,FFFC) DataSetTrailingPadding | X |
(0040,A121) Date | D | dates=K
(0018,1200) DateOfLastCalibration | X | dev=K dates=K
(0018,1012) DateOfSecondaryCapture | X | dates=K
(0040,A120) DateTime | D | dates=K
(0018,1202) DateTimeOfLastCalibration | X | dev=K dates=K
(0012,0063) DeidentificationMethod | K |
(0012,0064) DeidentificationMethodCodeSequence | K |
(0008,2111) DerivationDescription | X | desc=C
(0018,700A) DetectorID | X/D | dev=K
(3010,001B) DeviceAlternateIdentifier | X/Z/D | dev=K
(0050,0020) DeviceDescription | X | dev=K desc=C
(0018,1000) DeviceSerialNumber | X/Z/D | dev=K
(0018,1002) DeviceUID | U | dev=K
(0400,0100) DigitalSignatureUID | X |
(FFFA,FFFA) DigitalSignaturesSequence | X |
(0020,9164) DimensionOrganizationUID | U |
(0038,0030) DischargeDate | X | dates=K
(0038,0040) DischargeDiagnosisDescription | X | desc=C
(0038,0032) DischargeTime | X | dates=K
(4008,011A) DistributionAddress | X |
(4008,0119) DistributionName | X |
(300A,0016) DoseReferenceDescription | X | desc=C
(300A,0013) DoseReferenceUID | U |
(3010,006E) DosimetricObjectiveUID | U |
(0068,6226) EffectiveDateTime | X | dates=K
(0010,2160) EthnicGroup | X | pat=K
(0008,0058) FailedSOPInstanceUIDList | U |
(0070,031A) FiducialUID | U |
(0040,2017) FillerOrderNumberImagingServiceRequest | Z |
(3008,0054) FirstTreatmentDate | X | dates=K
(0018,9074) FrameAcquisitionDateTime | X | dates=K
(0020,9158) FrameComments | X | desc=C
(0020,0052) FrameOfReferenceUID | U |
(0018,9151) FrameReferenceDateTime | X | dates=K
(0016,0076) GPSAltitude | X |
(0016,0075) GPSAltitudeRef | X |
(0016,008C) GPSAreaInformation | X |
(0016,008D) GPSDateStamp | X | dates=K
(0016,0088) GPSDestBearing | X |
(0016,0087) GPSDestBearingRef | X |
(0016,008A) GPSDestDistance | X |
(0016,0089) GPSDestDistanceRef | X |
(0016,0084) GPSDestLatitude | X |
(0016,0083) GPSDestLatitudeRef | X |
(0016,0085) GPSDestLongitudeRef | X |
(0016,0072) GPSLatitude | X |
(0016,0071) GPSLatitudeRef | X |
(0016,0074) GPSLongitude | X |
(0016,0073) GPSLongitudeRef | X |
(0016,0082) GPSMapDatum | X |
(0016,0077) GPSTimeStamp | X |
(0016,0070) GPSVersionID | X |
(0018,1008) GantryID | X | dev=K
(0018,1005) GeneratorID | X | dev=K
(0018,1011) HardcopyCreationDeviceID | X | dev=K
(0018,1017) HardcopyDeviceManufacturer | X | dev=K
(0040,4037) HumanPerformerName | X |
(0040,4036) HumanPerformerOrganization | X |
(0088,0200) IconImageSequence | X |
(0008,4000) IdentifyingComments | X | desc=C
(0020,4000) ImageComments | X | desc=C
(0028,4000) ImagePresentationComments | X |
(0040,2400) ImagingServiceRequestComments | X | desc=C
(4008,0300) Impressions | X | desc=C
(0008,0015) InstanceCoercionDateTime | X | dates=K
(0008,0012) InstanceCreationDate | X/D | dates=K
(0008,0013) InstanceCreationTime | X/Z/D | dates=K
(0008,0014) InstanceCreatorUID | U |
(0008,0081) InstitutionAddress | X | inst=K
(0008,0082) InstitutionCodeSequence | X/Z/D | inst=K
(0008,0080) InstitutionName | X/Z/D | inst=K
(0008,1040) InstitutionalDepartmentName | X | inst=K
(0008,1041) InstitutionalDepartmentTypeCodeSequence | X | inst=K
(0010,1050) InsurancePlanIdentification | X |
(0040,1011) IntendedRecipientsOfResultsIdentificationSequence | X |
(4008,0111) InterpretationApproverSequence | X |
(4008,010C) InterpretationAuthor | X |
(4008,0115) InterpretationDiagnosisDescription | X | desc=C
(4008,0202) InterpretationIDIssuer | X |
(4008,0102) InterpretationRecorder | X |
(4008,010B) InterpretationText | X | desc=C
(4008,010A) InterpretationTranscriber | X |
(0008,3010) IrradiationEventUID | U |
(0038,0011) IssuerOfAdmissionID | X |
(0038,0014) IssuerOfAdmissionIDSequence | X |
(0010,0021) IssuerOfPatientID | X |
(0038,0061) IssuerOfServiceEpisodeID | X |
(0040,0513) IssuerOfTheContainerIdentifierSequence | X |
(0040,0562) IssuerOfTheSpecimenIdentifierSequence | X |
(0028,1214) LargePaletteColorLookupTableUID | U |
(0010,21D0) LastMenstrualDate | X | pat=K dates=K
(0016,004F) LensMake | X | dev=K
(0016,0050) LensModel | X | dev=K
(0016,0051) LensSerialNumber | X | dev=K
(0016,004E) LensSpecification | X | dev=K
(0050,0021) LongDeviceDescription | X | dev=K desc=C
(0400,0404) MAC | X |
(0016,002B) MakerNote | X |
(0018,100B) ManufacturerDeviceClassUID | U | dev=K
(0002,0003) MediaStorageSOPInstanceUID | U |
(0010,2000) MedicalAlerts | X | pat=C desc=C
(0010,1090) MedicalRecordLocator | X |
(0010,1080) MilitaryRank | X |
(0400,0550) ModifiedAttributesSequence | X |
(0020,3406) ModifiedImageDescription | X | desc=C
(0020,3401) ModifyingDeviceID | X | dev=K
(3008,0056) MostRecentTreatmentDate | X | dates=K
(0008,1060) NameOfPhysiciansReadingStudy | X |
(0040,A192) ObservationDateTrial | X | dates=K
(0040,A402) ObservationSubjectUIDTrial | X |
(0040,A193) ObservationTimeTrial | X | dates=K
(0040,A171) ObservationUID | U |
(0010,2180) Occupation | X | pat=K desc=C
(0008,1072) OperatorIdentificationSequence | X |
(0008,1070) OperatorsName | X/Z/D |
(0040,2010) OrderCallbackPhoneNumber | X |
(0040,2011) OrderCallbackTelecomInformation | X |
(0040,2008) OrderEnteredBy | X |
(0040,2009) OrderEntererLocation | X |
(0400,0561) OriginalAttributesSequence | X |
(0010,1000) OtherPatientIDs | X |
(0010,1002) OtherPatientIDsSequence | X |
(0010,1001) OtherPatientNames | X |
(0008,0024) OverlayDate | X | dates=K
(0008,0034) OverlayTime | X | dates=K
(300A,0760) OverrideDateTime | D | dates=K
(0028,1199) PaletteColorLookupTableUID | U |
(0040,A07A) ParticipantSequence | X |
(0040,A082) ParticipationDateTime | X | dates=K
(0010,1040) PatientAddress | X |
(0010,1010) PatientAge | X | pat=K
(0010,0030) PatientBirthDate | Z |
(0010,1005) PatientBirthName | X |
(0010,0032) PatientBirthTime | X |
(0010,4000) PatientComments | X | desc=C
(0010,0020) PatientID | Z |
(0012,0062) PatientIdentityRemoved | K |
(0038,0400) PatientInstitutionResidence | X |
(0010,0050) PatientInsurancePlanCodeSequence | X |
(0010,1060) PatientMotherBirthName | X |
(0010,0010) PatientName | Z |
(0010,0101) PatientPrimaryLanguageCodeSequence | X |
(0010,0102) PatientPrimaryLanguageModifierCodeSequence | X |
(0010,21F0) PatientReligiousPreference | X |
(0010,0040) PatientSex | Z | pat=K
(0010,2203) PatientSexNeutered | X/Z | pat=K
(0010,1020) PatientSize | X | pat=K
(0038,0500) PatientState | X | pat=C desc=C
(0010,2155) PatientTelecomInformation | X |
(0010,2154) PatientTelephoneNumbers | X |
(0040,1004) PatientTransportArrangements | X |
(0010,1030) PatientWeight | X | pat=K
(0040,0243) PerformedLocation | X |
(0040,0254) PerformedProcedureStepDescription | X | desc=C
(0040,0250) PerformedProcedureStepEndDate | X | dates=K
(0040,4051) PerformedProcedureStepEndDateTime | X | dates=K
(0040,0251) PerformedProcedureStepEndTime | X | dates=K
(0040,0253) PerformedProcedureStepID | X |
(0040,0244) PerformedProcedureStepStartDate | X | dates=K
(0040,4050) PerformedProcedureStepStartDateTime | X | dates=K
(0040,0245) PerformedProcedureStepStartTime | X | dates=K
(0040,0241) PerformedStationAETitle | X | dev=K
(0040,4030) PerformedStationGeographicLocationCodeSequence | X | dev=K
(0040,0242) PerformedStationName | X | dev=K
(0040,4028) PerformedStationNameCodeSequence | X | dev=K
(0008,1052) PerformingPhysicianIdentificationSequence | X |
(0008,1050) PerformingPhysicianName | X |
(0040,1102) PersonAddress | X |
(0040,1101) PersonIdentificationCodeSequence | D |
(0040,A123) PersonName | D |
(0040,1104) PersonTelecomInformation | X |
(0040,1103) PersonTelephoneNumbers | X |
(4008,0114) PhysicianApprovingInterpretation | X |
(0008,1048) PhysiciansOfRecord | X |
(0008,1049) PhysiciansOfRecordIdentificationSequence | X |
(0040,2016) PlacerOrderNumberImagingServiceRequest | Z |
(0018,1004) PlateID | X | dev=K
(0040,0012) PreMedication | X | pat=C
(0010,21C0) PregnancyStatus | X | pat=K
(0018,1030) ProtocolName | X/D | desc=C
(0008,1088) PyramidDescription | X | desc=C
(0008,0019) PyramidUID | U |
(3006,0028) ROIDescription | X | desc=C
(3006,00A6) ROIInterpreter | Z |
(3006,0088) ROIObservationDescription | X | desc=C
(3006,0085) ROIObservationLabel | X | desc=C
(300A,0615) RTAccessoryDeviceSlotID | Z |
(300A,0611) RTAccessoryHolderSlotID | Z |
(3010,005A) RTPhysicianIntentNarrative | Z | desc=C
(300A,0006) RTPlanDate | X/D | dates=K
(300A,0004) RTPlanDescription | X | desc=C
(300A,0002) RTPlanLabel | D | desc=C
(300A,0003) RTPlanName | X | desc=C
(300A,0007) RTPlanTime | X/D | dates=K
(3010,0054) RTPrescriptionLabel | D | desc=C
(300A,062A) RTToleranceSetLabel | D | desc=C
(3010,0056) RTTreatmentApproachLabel | X/D | desc=C
(3010,003B) RTTreatmentPhaseUID | U |
(300A,0619) RadiationDoseIdentificationLabel | X | desc=C
(300A,0623) RadiationDoseInVivoMeasurementLabel | X | desc=C
(0018,0030) Radionuclide | X |
(0032,1030) ReasonForStudy | X | desc=C
(0040,2001) ReasonForTheImagingServiceRequest | X | desc=C
(0040,1002) ReasonForTheRequestedProcedure | X | desc=C
(0032,1066) ReasonForVisit | X | desc=C
(0032,1067) ReasonForVisitCodeSequence | X | desc=C
(300A,073A) RecordedRTControlPointDateTime | D | dates=K
(3010,000B) ReferencedConceptualVolumeUID | U |
(0040,A13A) ReferencedDateTime | D | dates=K
(0400,0402) ReferencedDigitalSignatureSequence | X |
(300A,0083) ReferencedDoseReferenceUID | U |
(3010,006F) ReferencedDosimetricObjectiveUID | U |
(3010,0031) ReferencedFiducialsUID | U |
(3006,0024) ReferencedFrameOfReferenceUID | U |
(0040,4023) ReferencedGeneralPurposeScheduledProcedureStepTransactionUID | U |
(0008,1140) ReferencedImageSequence | X/Z/U* |
(0040,A172) ReferencedObservationUIDTrial | U |
(0038,0004) ReferencedPatientAliasSequence | X |
(0010,1100) ReferencedPatientPhotoSequence | X |
(0008,1120) ReferencedPatientSequence | X |
(0008,1111) ReferencedPerformedProcedureStepSequence | X/Z/D |
(0400,0403) ReferencedSOPInstanceMACSequence | X |
(0008,1155) ReferencedSOPInstanceUID | U |
(0008,1115) ReferencedSeriesSequence | K |
(0008,1110) ReferencedStudySequence | X/Z/U* |
(0008,0092) ReferringPhysicianAddress | X |
(0008,0096) ReferringPhysicianIdentificationSequence | X |
(0008,0090) ReferringPhysicianName | Z |
(0008,0094) ReferringPhysicianTelephoneNumbers | X |
(0010,2152) RegionOfResidence | X |
(3006,00C2) RelatedFrameOfReferenceUID | U |
(0040,0275) RequestAttributesSequence | X |
(0032,1070) RequestedContrastAgent | X | desc=C
(0040,1400) RequestedProcedureComments | X | desc=C
(0032,1060) RequestedProcedureDescription | X/Z | desc=C
(0040,1001) RequestedProcedureID | X |
(0040,1005) RequestedProcedureLocation | X |
(0032,1032) RequestingPhysician | X |
(0032,1033) RequestingService | X |
(0018,9185) RespiratoryMotionCompensationTechniqueDescription | X | desc=C
(0010,2299) ResponsibleOrganization | X |
(0010,2297) ResponsiblePerson | X |
(4008,4000) ResultsComments | X | desc=C
(4008,0118) ResultsDistributionListSequence | X |
(4008,0042) ResultsIDIssuer | X |
(0008,0054) RetrieveAETitle | X |
(300E,0004) ReviewDate | X | dates=K
(300E,0005) ReviewTime | X | dates=K
(300E,0008) ReviewerName | X/Z |
(0008,0016) SOPClassUID | K |
(0008,0018) SOPInstanceUID | U |
(3008,0162) SafePositionExitDate | X | dates=K
(3008,0164) SafePositionExitTime | X | dates=K
(3008,0166) SafePositionReturnDate | X | dates=K
(3008,0168) SafePositionReturnTime | X | dates=K
(0040,4034) ScheduledHumanPerformersSequence | X |
(0038,001E) ScheduledPatientInstitutionResidence | X |
(0040,000B) ScheduledPerformingPhysicianIdentificationSequence | X |
(0040,0006) ScheduledPerformingPhysicianName | X |
(0040,0007) ScheduledProcedureStepDescription | X | desc=C
(0040,0004) ScheduledProcedureStepEndDate | X | dates=K
(0040,0005) ScheduledProcedureStepEndTime | X | dates=K
(0040,4008) ScheduledProcedureStepExpirationDateTime | X | dates=K
(0040,0011) ScheduledProcedureStepLocation | X | dev=K
(0040,4010) ScheduledProcedureStepModificationDateTime | X | dates=K
(0040,0002) ScheduledProcedureStepStartDate | X | dates=K
(0040,4005) ScheduledProcedureStepStartDateTime | X | dates=K
(0040,0003) ScheduledProcedureStepStartTime | X | dates=K
(0040,0001) ScheduledStationAETitle | X | dev=K
(0040,4027) ScheduledStationGeographicLocationCodeSequence | X | dev=K
(0040,0010) ScheduledStationName | X | dev=K
(0040,4025) ScheduledStationNameCodeSequence | X | dev=K
(0032,1020) ScheduledStudyLocation | X | dev=K
(0032,1021) ScheduledStudyLocationAETitle | X | dev=K
(0018,1010) SecondaryCaptureDeviceID | X | dev=K
(0018,1016) SecondaryCaptureDeviceManufacturer | X | dev=K
(0018,1018) SecondaryCaptureDeviceManufacturerModelName | X | dev=K
(0018,1019) SecondaryCaptureDeviceSoftwareVersions | X | dev=K
(0008,0021) SeriesDate | X/D | dates=K
(0008,103E) SeriesDescription | X | desc=C
(0020,000E) SeriesInstanceUID | U |
(0008,0031) SeriesTime | X/D | dates=K
(0038,0062) ServiceEpisodeDescription | X | desc=C
(0038,0060) ServiceEpisodeID | X |
(300A,01B2) SetupTechniqueDescription | X | desc=C
(300A,01A6) ShieldingDeviceDescription | X | desc=C
(0040,06FA) SlideIdentifier | X |
(0010,21A0) SmokingStatus | X | pat=K
(0018,1020) SoftwareVersions | X/Z/D | dev=K
(3010,0015) SourceConceptualVolumeUID | U |
(0018,936A) SourceEndDateTime | D | dates=K
(0034,0005) SourceIdentifier | D |
(0008,2112) SourceImageSequence | X/Z/U* |
(300A,0216) SourceManufacturer | X | dev=K
(3008,0105) SourceSerialNumber | X/Z | dev=K
(0018,9369) SourceStartDateTime | D | dates=K
(0038,0050) SpecialNeeds | X | pat=C
(0040,050A) SpecimenAccessionNumber | X |
(0040,0602) SpecimenDetailedDescription | X | desc=C
(0040,0551) SpecimenIdentifier | D |
(0040,0610) SpecimenPreparationSequence | Z |
(0040,0600) SpecimenShortDescription | X | desc=C
(0040,0554) SpecimenUID | U |
(0018,9516) StartAcquisitionDateTime | X/D | dates=K
(0008,1010) StationName | X/Z/D | dev=K
(0088,0140) StorageMediaFileSetUID | U |
(3006,0008) StructureSetDate | X | dates=K
(3006,0006) StructureSetDescription | X | desc=C
(3006,0002) StructureSetLabel | D |
(3006,0004) StructureSetName | X |
(3006,0009) StructureSetTime | X | dates=K
(0032,4000) StudyComments | X | desc=C
(0008,0020) StudyDate | Z | dates=K
(0008,1030) StudyDescription | X | desc=C
(0020,0010) StudyID | Z |
(0032,0012) StudyIDIssuer | X |
(0020,000D) StudyInstanceUID | U |
(0008,0030) StudyTime | Z | dates=K
(0020,0200) SynchronizationFrameOfReferenceUID | U |
(0018,2042) TargetUID | U |
(0040,A354) TelephoneNumberTrial | X |
(0040,DB0D) TemplateExtensionCreatorUID | U |
(0040,DB0C) TemplateExtensionOrganizationUID | U |
(4000,4000) TextComments | X |
(2030,0020) TextString | X |
(0040,A160) TextValue | X |
(0040,A122) Time | D | dates=K
(0018,1201) TimeOfLastCalibration | X | dev=K dates=K
(0018,1014) TimeOfSecondaryCapture | X | dates=K
(0008,0201) TimezoneOffsetFromUTC | X | dates=K
(0088,0910) TopicAuthor | X |
(0088,0912) TopicKeywords | X |
(0088,0906) TopicSubject | X |
(0088,0904) TopicTitle | X |
(0062,0020) TrackingID | X |
(0062,0021) TrackingUID | U |
(0008,1195) TransactionUID | U |
(3008,0250) TreatmentDate | X | dates=K
(3010,0077) TreatmentSite | X | desc=C
(3008,0251) TreatmentTime | X | dates=K
(0040,A124) UID | U |
(0018,1009) UniqueDeviceIdentifier | X | dev=K
(0040,A358) VerbalSourceIdentifierCodeSequenceTrial | X |
(0040,A030) VerificationDateTime | D | dates=K
(0040,A088) VerifyingObserverIdentificationCodeSequence | Z |
(0040,A075) VerifyingObserverName | D |
(0040,A073) VerifyingObserverSequence | D |
(0040,A027) VerifyingOrganization | X |
(0038,4000) VisitComments | X | desc=C
(0018,9371) XRayDetectorID | X/D | dev=K
(0018,9373) XRayDetectorLabel | X | dev=K
(0018,9367) XRaySourceID | X/D | dev=K
"""

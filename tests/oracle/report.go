package main

import (
	"fmt"
)

// A corrupt blob can produce one complaint per chunk; past this many the rest are only counted, so the
// report stays readable and its first lines stay the informative ones.
const maxListed = 200

// findings collects the errors (conformance failures) and warnings (allowed by the spec, but worth
// knowing, and failures under --strict) of one level of a report.
type findings struct {
	Errors   []string `json:"errors"`
	Warnings []string `json:"warnings"`
	moreErrs int
	moreWarn int
}

func (f *findings) errf(format string, a ...interface{}) {
	if len(f.Errors) >= maxListed {
		f.moreErrs++
		return
	}
	f.Errors = append(f.Errors, fmt.Sprintf(format, a...))
}

func (f *findings) warnf(format string, a ...interface{}) {
	if len(f.Warnings) >= maxListed {
		f.moreWarn++
		return
	}
	f.Warnings = append(f.Warnings, fmt.Sprintf(format, a...))
}

// seal appends the count of complaints left out and makes both lists non-nil, so the JSON always has
// arrays (callers index them without checking for null).
func (f *findings) seal() {
	if f.moreErrs > 0 {
		f.Errors = append(f.Errors, fmt.Sprintf("... and %d more error(s)", f.moreErrs))
		f.moreErrs = 0
	}
	if f.moreWarn > 0 {
		f.Warnings = append(f.Warnings, fmt.Sprintf("... and %d more warning(s)", f.moreWarn))
		f.moreWarn = 0
	}
	if f.Errors == nil {
		f.Errors = []string{}
	}
	if f.Warnings == nil {
		f.Warnings = []string{}
	}
}

// verdict is ok/error for one level: the first error, or under --strict the first warning.
func (f *findings) verdict(strict bool) (bool, string) {
	if len(f.Errors) > 0 {
		return false, f.Errors[0]
	}
	if strict && len(f.Warnings) > 0 {
		return false, "warning under --strict: " + f.Warnings[0]
	}
	return true, ""
}

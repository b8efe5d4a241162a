package postgres

import (
	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
)

// startupPromptMode is promptMode for a whole StartupMessage. Under
// prompt: auto a client that names no application can still be known by
// the parameters it sends, and two common drivers that show no notice
// while connecting are known that way:
//
//   - pgjdbc sends application_name only when told to assume a 9.0 or
//     newer server (assumeMinServerVersion); otherwise it sets it with a
//     SET once connected, too late for the prompt. Its startup packet
//     always carries DateStyle and extra_float_digits, which libpq-based
//     clients never send unasked.
//   - lib/pq installs a notice handler only once connected, and sends
//     datestyle "ISO, MDY" (lower-case key) with every startup.
//
// Either would otherwise wait for a sign-in whose code it never shows.
func startupPromptMode(setting string, params map[string]string) auth.PromptMode {
	app := params["application_name"]
	if (setting == "" || setting == config.PromptAuto) && app == "" && hidesStartupNotices(params) {
		return auth.PromptError
	}
	return promptMode(setting, app)
}

func hidesStartupNotices(params map[string]string) bool {
	pgjdbc := params["DateStyle"] != "" && params["extra_float_digits"] != ""
	libpq := params["datestyle"] == "ISO, MDY"
	return pgjdbc || libpq
}

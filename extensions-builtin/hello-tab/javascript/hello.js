// Loaded into the page because it lies in javascript/ (A1111's convention): it only marks the page,
// so a test (or you, in the browser's console) can see that extension scripts run.
document.documentElement.dataset.helloTab = "loaded";
